"""Seeded, vectorised card-transaction simulator (Le Borgne et al., *Reproducible Machine Learning for Credit
Card Fraud Detection*, 2022, chapter 3), with optional drift injection.

Generative process (the book's):

- Customers and terminals sit at uniform random locations on a 100 x 100 grid. A customer uses the terminals
  strictly within ``radius`` of its location; a customer with none in reach makes no transaction.
- Customer profile: mean amount ~ U(5, 100), std = mean / 2, mean transactions per day ~ U(0, 4).
- Each day a customer makes Poisson(mean per day) transactions. Time of day ~ Normal(43200, 20000) seconds,
  floored to the second; draws outside [0, 86400) are dropped (so ~3% of draws vanish, as in the book).
  Amount ~ Normal(mean, std), a negative draw is redrawn ~ U(0, 2 * mean); rounded to cents. The terminal is
  uniform among the customer's reachable terminals.
- Fraud scenarios, applied in this order (a later one overrides the scenario code of an earlier one):
  1. every transaction with amount > 220 is a fraud;
  2. each day 2 random terminals are compromised for 28 days (that day included): all their transactions
     in the window are frauds;
  3. each day 3 random customers are compromised for 14 days: among the day's group's transactions in the
     window, a random third (``n // 3``) have their amount multiplied by 5 and are frauds. A transaction
     picked by several overlapping windows is multiplied once (the book's loop would multiply it again).

Defaults (5,000 customers, 10,000 terminals, 183 days from 2018-04-01, r = 5, seed 0) give ~1.75M
transactions and ~0.84% frauds, like the book's dataset (not the same rows: the random streams differ).

Drift (off unless ``drift_start_day`` is set, a day index or an ISO date), from that day on:

- (a) *card testing*, a pattern none of the scenarios produces (scenario 4): each day
  ``card_testing_customers_per_day`` random customers have their card tested: a burst of 5-15 transactions
  of U(1, 10) each, 2-30 s apart (at most 7.5 minutes in all), at one terminal: half of the bursts at one
  of the customer's usual terminals, the rest (and all of a customer without one) at a random terminal.
  Every burst transaction is a fraud. Signature: a spike of small amounts in the customer's short windows.
- (b) *genuine behaviour shift*: after fraud labelling, every genuine (scenario 0) transaction's amount is
  multiplied by ``genuine_amount_factor`` (customers spend more) and a ``drift_night_fraction`` share of
  them move to a uniform time in [00:00, 06:00) (more night-time activity). Frauds are left as they were,
  so the fraud rate only moves by the card-testing frauds; but genuine amounts now cross 220 too, so a model
  that learnt scenario 1 (amount > 220 is a fraud) starts raising false alarms: covariate and concept drift.

The drift streams are independent of the base ones, so the rows before the drift day are identical to
those of the same config without drift.

Labels: every transaction gets ``label_time = tx_datetime + delay``. ``label_delay`` is ``"fixed:D"`` (or
just ``"D"``), a delay of D days for every transaction, or ``"uniform:LO:HI"``, a delay ~ U(LO, HI) days
drawn per transaction, rounded to the second.

Output columns (the project contract): ``transaction_id`` (int64, unique, increasing with time),
``tx_datetime`` (Datetime[us], naive UTC), ``customer_id`` (int64), ``terminal_id`` (int64),
``tx_amount`` (float64, >= 0, cents), ``tx_fraud`` (int8 0/1), ``tx_fraud_scenario`` (int8: 0 genuine,
1-3 the book's scenarios, 4 card testing), ``label_time`` (Datetime[us]); sorted by ``tx_datetime`` then
``transaction_id``, as a polars frame. Microsecond resolution is what DuckDB's TIMESTAMP uses.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

# Part of the fingerprint: bump it when a change alters the generated rows, so cached files are invalidated.
SIMULATOR_VERSION = 1

COLUMNS: tuple[str, ...] = (
    "transaction_id", "tx_datetime", "customer_id", "terminal_id",
    "tx_amount", "tx_fraud", "tx_fraud_scenario", "label_time",
)
DTYPES = pl.Schema({
    "transaction_id": pl.Int64, "tx_datetime": pl.Datetime("us"), "customer_id": pl.Int64,
    "terminal_id": pl.Int64, "tx_amount": pl.Float64, "tx_fraud": pl.Int8, "tx_fraud_scenario": pl.Int8,
    "label_time": pl.Datetime("us"),
})

SCENARIO_GENUINE = 0
SCENARIO_AMOUNT = 1
SCENARIO_TERMINAL = 2
SCENARIO_CUSTOMER = 3
SCENARIO_CARD_TESTING = 4

DAY_S = 86_400
GRID = 100.0
AMOUNT_FRAUD_THRESHOLD = 220.0
TERMINALS_PER_DAY, TERMINAL_WINDOW_DAYS = 2, 28
CUSTOMERS_PER_DAY, CUSTOMER_WINDOW_DAYS, CUSTOMER_AMOUNT_FACTOR = 3, 14, 5.0
CARD_TESTING_BURST = (5, 15)  # transactions per burst, inclusive
CARD_TESTING_AMOUNT = (1.0, 10.0)
CARD_TESTING_GAP_S = (2, 30)  # seconds between burst transactions, inclusive
NIGHT_END_S = 6 * 3600


def parse_label_delay(spec: str) -> tuple[str, float, float]:
    """``"fixed:7"`` / ``"7"`` -> ("fixed", 7, 7); ``"uniform:1:14"`` -> ("uniform", 1, 14). Days."""
    parts = str(spec).strip().lower().split(":")
    try:
        if len(parts) == 1:
            parts = ["fixed", parts[0]]
        if parts[0] == "fixed" and len(parts) == 2:
            lo = hi = float(parts[1])
        elif parts[0] == "uniform" and len(parts) == 3:
            lo, hi = float(parts[1]), float(parts[2])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"label_delay must be 'fixed:D' or 'uniform:LO:HI' (days), got {spec!r}") from None
    if not (0 <= lo <= hi) or not np.isfinite(hi):
        raise ValueError(f"label_delay needs 0 <= LO <= HI, got {spec!r}")
    return parts[0], lo, hi


def _parse_iso(value: str, name: str) -> datetime:
    try:
        return datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be an ISO date, got {value!r}") from None


@dataclass(frozen=True)
class SimulationConfig:
    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    label_delay: str = "fixed:7"  # or "uniform:LO:HI" (days)
    drift_start_day: int | str | None = None  # day index from start_date, or an ISO date; None = no drift
    card_testing_customers_per_day: int = 10
    genuine_amount_factor: float = 1.5  # genuine shift after drift start
    drift_night_fraction: float = 0.2  # share of genuine transactions moved to 00:00-06:00 after drift start

    def __post_init__(self) -> None:
        if self.n_customers < 1 or self.n_terminals < 1 or self.n_days < 1:
            raise ValueError("n_customers, n_terminals and n_days must be >= 1")
        if not self.radius > 0:
            raise ValueError("radius must be > 0")
        parse_label_delay(self.label_delay)
        self.start()  # validates start_date
        self.drift_day()  # validates drift_start_day
        if self.card_testing_customers_per_day < 0:
            raise ValueError("card_testing_customers_per_day must be >= 0")
        if not self.genuine_amount_factor > 0:
            raise ValueError("genuine_amount_factor must be > 0")
        if not 0 <= self.drift_night_fraction <= 1:
            raise ValueError("drift_night_fraction must be in [0, 1]")

    def start(self) -> np.datetime64:
        ts = _parse_iso(self.start_date, "start_date")
        if ts.tzinfo is not None:
            raise ValueError("start_date must be naive (UTC)")
        return np.datetime64(ts, "s")

    def drift_day(self) -> int | None:
        """``drift_start_day`` as a day index (an ISO date is resolved against ``start_date``)."""
        d = self.drift_start_day
        if d is None:
            return None
        if isinstance(d, str) and not d.strip().lstrip("-").isdigit():
            day = (_parse_iso(d, "drift_start_day") - _parse_iso(self.start_date, "start_date")) // timedelta(days=1)
        else:
            day = int(d)
        if not 0 <= day < self.n_days:
            raise ValueError(f"drift_start_day {d!r} is outside the simulated {self.n_days} days")
        return day

    def fingerprint(self) -> str:
        """Short stable hash of what determines the rows: equal fingerprints mean identical data."""
        kind, lo, hi = parse_label_delay(self.label_delay)
        payload = asdict(self) | {
            "version": SIMULATOR_VERSION,
            "start_date": str(self.start()),
            "label_delay": [kind, lo, hi],
            "drift_start_day": self.drift_day(),
        }
        if payload["drift_start_day"] is None:  # drift parameters are inert without drift
            for key in ("card_testing_customers_per_day", "genuine_amount_factor", "drift_night_fraction"):
                payload.pop(key)
        blob = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CompromiseSchedule:
    """Which terminals (scenario 2) and customers (scenario 3) are compromised from which day."""

    terminal_ids: np.ndarray  # int64, TERMINALS_PER_DAY per day
    terminal_start_days: np.ndarray
    customer_ids: np.ndarray  # int64, CUSTOMERS_PER_DAY per day
    customer_start_days: np.ndarray


# One independent stream per stage: a stage's draws never shift another's (e.g. drift leaves the base alone).
_STREAMS = ("profiles", "transactions", "terminals", "customers", "customer_pick", "drift", "card_testing",
            "labels")


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, children, strict=True)}


def _daily_sample(rng: np.random.Generator, n_days: int, population: int, k: int) -> tuple[np.ndarray, ...]:
    """k distinct ids per day (fewer if the population is smaller): (ids, days)."""
    k = min(k, population)
    ids = np.array([rng.choice(population, k, replace=False) for _ in range(n_days)], dtype=np.int64)
    return ids.ravel(), np.repeat(np.arange(n_days, dtype=np.int64), k)


def compromise_schedule(config: SimulationConfig) -> CompromiseSchedule:
    """The scenario-2/3 schedule ``simulate(config)`` uses (for tests and analysis)."""
    rngs = _rngs(config.seed)
    t_ids, t_days = _daily_sample(rngs["terminals"], config.n_days, config.n_terminals, TERMINALS_PER_DAY)
    c_ids, c_days = _daily_sample(rngs["customers"], config.n_days, config.n_customers, CUSTOMERS_PER_DAY)
    return CompromiseSchedule(t_ids, t_days, c_ids, c_days)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    total = int(lengths.sum())
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


def _reachable_terminals(cust_xy: np.ndarray, term_xy: np.ndarray, radius: float,
                         chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, terminal ids ascending) of the terminals strictly within ``radius`` of each customer.

    Terminals are sorted by x so each customer only measures the vertical band |dx| < r (~10% of them by
    default) instead of all pairs.
    """
    order = np.argsort(term_xy[:, 0], kind="stable")
    tx, ty = term_xy[order, 0], term_xy[order, 1]
    counts, indices = [], []
    r2 = radius * radius
    for lo_c in range(0, len(cust_xy), chunk):
        cx, cy = cust_xy[lo_c:lo_c + chunk, 0], cust_xy[lo_c:lo_c + chunk, 1]
        lo = np.searchsorted(tx, cx - radius, "left")
        n = np.searchsorted(tx, cx + radius, "right") - lo
        owner = np.repeat(np.arange(len(cx)), n)
        pos = _ranges(lo, n)
        keep = (tx[pos] - cx[owner]) ** 2 + (ty[pos] - cy[owner]) ** 2 < r2
        owner, term = owner[keep], order[pos[keep]]
        srt = np.lexsort((term, owner))
        counts.append(np.bincount(owner, minlength=len(cx)))
        indices.append(term[srt])
    deg = np.concatenate(counts)
    indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
    return indptr, np.concatenate(indices).astype(np.int64)


@contextmanager
def _stages(total: int, enabled: bool) -> Iterator[tqdm]:
    bar = tqdm(total=total, desc="simulate", unit="stage", file=sys.stderr, disable=not enabled,
               dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _step(bar: tqdm, name: str) -> None:
    bar.set_postfix_str(name, refresh=False)
    bar.update(1)


def simulate(config: SimulationConfig = SimulationConfig(), progress: bool = True) -> pl.DataFrame:
    """Generate the transactions of ``config`` (deterministic for a config). See the module docstring."""
    cfg = config
    rngs = _rngs(cfg.seed)
    n_c, n_t, n_days = cfg.n_customers, cfg.n_terminals, cfg.n_days
    drift_day = cfg.drift_day()

    with _stages(8, progress) as bar:
        # -- profiles and reachability
        r = rngs["profiles"]
        cust_xy = r.uniform(0, GRID, (n_c, 2))
        mean_amount = r.uniform(5, 100, n_c)
        std_amount = mean_amount / 2
        tx_per_day = r.uniform(0, 4, n_c)
        term_xy = r.uniform(0, GRID, (n_t, 2))
        indptr, reach = _reachable_terminals(cust_xy, term_xy, cfg.radius)
        deg = np.diff(indptr)
        _step(bar, "profiles")

        # -- genuine transactions: day-major (day, customer) cells expanded with np.repeat
        r = rngs["transactions"]
        counts = r.poisson(tx_per_day, size=(n_days, n_c))
        counts[:, deg == 0] = 0
        flat = counts.ravel()
        cust = np.repeat(np.tile(np.arange(n_c, dtype=np.int64), n_days), flat)
        day = np.repeat(np.arange(n_days, dtype=np.int64), counts.sum(axis=1))
        tod = np.floor(r.normal(DAY_S / 2, 20_000, len(cust)))
        keep = (tod >= 0) & (tod < DAY_S)
        cust, day, tod = cust[keep], day[keep], tod[keep].astype(np.int64)
        amount = r.normal(mean_amount[cust], std_amount[cust])
        neg = amount < 0
        amount[neg] = r.uniform(0, 2 * mean_amount[cust[neg]])
        amount = np.round(amount, 2)
        term = reach[indptr[cust] + r.integers(0, deg[cust])]
        _step(bar, "transactions")

        # -- scenario 1: large amounts
        scenario = np.where(amount > AMOUNT_FRAUD_THRESHOLD, SCENARIO_AMOUNT, SCENARIO_GENUINE)
        scenario = scenario.astype(np.int8)
        _step(bar, "scenario 1")

        # -- scenario 2: flag (terminal, day) cells of the compromise windows, then look transactions up
        sched = compromise_schedule(cfg)
        w = np.arange(TERMINAL_WINDOW_DAYS)
        t_days = (sched.terminal_start_days[:, None] + w).ravel()
        t_ids = np.repeat(sched.terminal_ids, TERMINAL_WINDOW_DAYS)
        inside = t_days < n_days
        hot = np.zeros(n_t * n_days, dtype=bool)
        hot[t_ids[inside] * n_days + t_days[inside]] = True
        scenario[hot[term * n_days + day]] = SCENARIO_TERMINAL
        _step(bar, "scenario 2")

        # -- scenario 3: per day's group, a random third of its customers' window transactions
        key = cust * n_days + day
        by_key = np.argsort(key, kind="stable")
        sorted_key = key[by_key]
        c_ids, c_days = sched.customer_ids, sched.customer_start_days
        lo = np.searchsorted(sorted_key, c_ids * n_days + c_days, "left")
        hi = np.searchsorted(sorted_key, c_ids * n_days + np.minimum(c_days + CUSTOMER_WINDOW_DAYS, n_days),
                             "left")
        cand = by_key[_ranges(lo, hi - lo)]
        group = np.repeat(c_days, hi - lo)
        size = np.bincount(group, minlength=n_days)
        prio = np.lexsort((rngs["customer_pick"].random(len(cand)), group))
        rank = np.arange(len(cand)) - (np.cumsum(size) - size)[group[prio]]
        picked = np.unique(cand[prio][rank < size[group[prio]] // 3])
        amount[picked] = np.round(amount[picked] * CUSTOMER_AMOUNT_FACTOR, 2)
        scenario[picked] = SCENARIO_CUSTOMER
        _step(bar, "scenario 3")

        # -- genuine behaviour shift (drift b): genuine rows only, so the fraud process is unchanged
        if drift_day is not None:
            r = rngs["drift"]
            late = (day >= drift_day) & (scenario == SCENARIO_GENUINE)
            amount[late] = np.round(amount[late] * cfg.genuine_amount_factor, 2)
            night = late & (r.random(len(day)) < cfg.drift_night_fraction)
            tod[night] = r.integers(0, NIGHT_END_S, int(night.sum()))
        _step(bar, "drift shift")

        # -- card testing (drift a): appended bursts, all frauds
        if drift_day is not None and cfg.card_testing_customers_per_day > 0:
            r = rngs["card_testing"]
            n_drift_days = n_days - drift_day
            b_cust, b_day = _daily_sample(r, n_drift_days, n_c, cfg.card_testing_customers_per_day)
            b_day = b_day + drift_day
            nb = len(b_cust)
            b_size = r.integers(CARD_TESTING_BURST[0], CARD_TESTING_BURST[1] + 1, nb)
            max_span = CARD_TESTING_BURST[1] * CARD_TESTING_GAP_S[1]
            b_start = r.integers(0, DAY_S - max_span, nb)
            own = (r.random(nb) < 0.5) & (deg[b_cust] > 0)
            b_term = r.integers(0, n_t, nb)
            b_term[own] = reach[indptr[b_cust[own]] + r.integers(0, deg[b_cust[own]])]
            gaps = r.integers(CARD_TESTING_GAP_S[0], CARD_TESTING_GAP_S[1] + 1, int(b_size.sum()))
            csum = np.cumsum(gaps)
            first = np.cumsum(b_size) - b_size
            offset = csum - np.repeat(csum[first] - gaps[first], b_size)  # burst-relative, first gap included
            cust = np.concatenate([cust, np.repeat(b_cust, b_size)])
            day = np.concatenate([day, np.repeat(b_day, b_size)])
            tod = np.concatenate([tod, np.repeat(b_start, b_size) + offset])
            term = np.concatenate([term, np.repeat(b_term, b_size)])
            amount = np.concatenate([amount, np.round(r.uniform(*CARD_TESTING_AMOUNT, len(gaps)), 2)])
            scenario = np.concatenate([scenario, np.full(len(gaps), SCENARIO_CARD_TESTING, np.int8)])
        _step(bar, "card testing")

        # -- order by time (stable: generation order breaks ties), ids, labels
        secs = day * DAY_S + tod
        order = np.argsort(secs, kind="stable")
        secs = secs[order]
        kind, lo_d, hi_d = parse_label_delay(cfg.label_delay)
        if kind == "fixed" or lo_d == hi_d:
            delay = np.full(len(secs), round(lo_d * DAY_S), dtype=np.int64)
        else:
            delay = np.round(rngs["labels"].uniform(lo_d, hi_d, len(secs)) * DAY_S).astype(np.int64)
        start = cfg.start()
        tx_dt = (start + secs.astype("timedelta64[s]")).astype("datetime64[us]")
        df = pl.DataFrame({
            "transaction_id": np.arange(len(secs), dtype=np.int64),
            "tx_datetime": tx_dt,
            "customer_id": cust[order],
            "terminal_id": term[order],
            "tx_amount": amount[order],
            "tx_fraud": (scenario[order] > 0).astype(np.int8),
            "tx_fraud_scenario": scenario[order],
            "label_time": tx_dt + delay.astype("timedelta64[s]"),
        }, schema=DTYPES)
        _step(bar, "assemble")
    return df


def _coerce(df: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"transactions lack columns {missing}")
    return df.select(pl.col(c).cast(t) for c, t in DTYPES.items())


# pyarrow's CSV writer quoted the header; kept so the files stay byte for byte what they were.
_CSV_HEADER = ",".join(f'"{c}"' for c in COLUMNS) + "\n"


def write_transactions(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``), atomically; returns the path.

    CSV timestamps are written to the second (``2018-04-01 00:01:39``), the simulator's resolution.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".csv", ".csv.gz", ".parquet")):
        raise ValueError(f"unsupported extension for {path} (use .csv, .csv.gz or .parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside and rename, so a concurrent reader of a cache file never sees half of it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df = _coerce(df)
    try:
        if name.endswith(".parquet"):
            df.write_parquet(tmp)
        else:
            # Level 1: ~8x faster than gzip's default (9) for a slightly larger file.
            with (gzip.open(tmp, "wb", compresslevel=1) if name.endswith(".gz") else open(tmp, "wb")) as out:
                out.write(_CSV_HEADER.encode())
                # pyarrow printed whole amounts bare ("89", polars says "89.0"): the same bytes as before.
                df.with_columns(pl.col("tx_amount").cast(pl.String).str.strip_suffix(".0")).write_csv(
                    out, include_header=False, datetime_format="%Y-%m-%d %H:%M:%S")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_transactions(path: str | Path) -> pl.DataFrame:
    """Read a file written by ``write_transactions`` (or any CSV/Parquet with the contract's columns)."""
    path = Path(path)
    if path.name.lower().endswith(".parquet"):
        df = pl.read_parquet(path)
    else:
        # Stamps come in as text, parsed with one format inferred per column: ~4x faster than the reader's own.
        stamps = [c for c, t in DTYPES.items() if t == pl.Datetime]
        df = pl.read_csv(path, schema_overrides={c: pl.String if c in stamps else t for c, t in DTYPES.items()})
        df = df.with_columns(pl.col(c).str.to_datetime(time_unit="us") for c in stamps if c in df.columns)
    return _coerce(df)
