"""Render the feature spec for the online path: the Python counterpart of ``ml.features.sql``.

``ml.features.sql`` turns each spec feature into SQL over the whole table; this module turns it into a
computation over one transaction plus the entity state an online store holds (the entity's recent
transactions and its known frauds). Both follow the time semantics in ``ml.features.spec``'s docstring;
``ml.online.parity`` replays the data through this path and compares with dbt's rows.

Times are integers (microseconds since the Unix epoch, UTC) so that window bounds compare exactly, as
DuckDB's microsecond timestamps do.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from ml.features.spec import FEATURES, max_lookback

EPOCH = datetime(1970, 1, 1)
ONE_US = timedelta(microseconds=1)


def to_us(value: datetime | timedelta) -> int:
    """A naive-UTC datetime (or an aware one, converted) or a duration -> integer microseconds."""
    if isinstance(value, timedelta):
        return value // ONE_US
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return (value - EPOCH) // ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


# Python counterparts of ml.features.sql.ROW_SQL (same keys, same meaning).
ROW_PY: dict[str, Callable[[float, datetime], float]] = {
    "amount": lambda amount, t: float(amount),
    "weekend": lambda amount, t: 1.0 if t.isoweekday() >= 6 else 0.0,
    "night": lambda amount, t: 1.0 if t.hour <= 6 else 0.0,
}

# Which entities the online state needs, how far back, and whether it must track known frauds.
WINDOW_ENTITIES: dict[str, timedelta] = {
    f.entity: max_lookback(f.entity) for f in FEATURES if f.entity is not None
}
FRAUD_ENTITIES: frozenset[str] = frozenset(
    f.entity for f in FEATURES if f.entity is not None and f.agg == "fraud_rate"
)


@dataclass
class EntityState:
    """What the store returns for one entity: entries with time in [t - lookback, t], sorted by time
    (same-instant entries in any order)."""

    history: list[tuple[int, str, float]] = field(default_factory=list)  # (time_us, transaction_id, amount)
    frauds: list[tuple[int, int]] = field(default_factory=list)  # (tx time_us, label_time_us)
    # The history as parallel lists (times, ids, amounts) instead of ``history``: a store that parses its
    # replies into columns hands slices over, so no per-entry tuples are built and taken apart again.
    columns: tuple[list[int], list[str], list[float]] | None = None


class TxEvent(NamedTuple):  # a tuple: built per scored transaction, much cheaper than a frozen dataclass
    transaction_id: str
    t_us: int
    entities: Mapping[str, str]  # entity column -> id, e.g. {"customer_id": "C1", "terminal_id": "T9"}
    amount: float
    tx_datetime: datetime


def tx_event(tx: Mapping[str, Any] | TxEvent) -> TxEvent:
    """A transaction dict (contract keys) -> the normalised event the stores and the computation use."""
    if isinstance(tx, TxEvent):
        return tx
    t = tx["tx_datetime"]
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return TxEvent(
        transaction_id=str(tx["transaction_id"]),
        t_us=to_us(t),
        entities={e: str(tx[e]) for e in WINDOW_ENTITIES},
        amount=float(tx["tx_amount"]),
        tx_datetime=t,
    )


class _Window:
    """One entity's history as parallel sorted lists, the current transaction excluded, plus known frauds."""

    __slots__ = ("times", "ids", "amounts", "fraud_times")

    def __init__(self, state: EntityState, tx: TxEvent):
        if state.columns is not None:
            self.times, self.ids, self.amounts = (list(c) for c in state.columns)
        else:
            hist = state.history
            self.times = [h[0] for h in hist]
            self.ids = [h[1] for h in hist]
            self.amounts = [h[2] for h in hist]
        tid = tx.transaction_id
        while tid in self.ids:  # the transaction itself (already recorded) is not its own history
            i = self.ids.index(tid)
            del self.times[i], self.ids[i], self.amounts[i]
        self.fraud_times = sorted([ft for ft, lt in state.frauds if lt <= tx.t_us])

    def trailing(self, tx: TxEvent, window_us: int) -> tuple[int, float]:
        """Earlier transactions in [t - w, t] (same-instant peers with a smaller id), plus this one."""
        t = tx.t_us
        lo = bisect_left(self.times, t - window_us)
        hi = bisect_left(self.times, t)
        # Same-instant peers sort by id: those with a smaller id came first and are seen.
        hi_peer = bisect_right(self.times, t, hi)
        amounts = self.amounts[lo:hi]
        if hi_peer > hi:
            amounts += [self.amounts[i] for i in range(hi, hi_peer) if self.ids[i] < tx.transaction_id]
        return len(amounts) + 1, math.fsum(amounts) + tx.amount

    def earlier_max(self, tx: TxEvent, window_us: int) -> float:
        """Largest amount of the earlier transactions in [t - w, t] (this one excluded); 0 if none."""
        t = tx.t_us
        lo, hi = bisect_left(self.times, t - window_us), bisect_left(self.times, t)
        best = max(self.amounts[lo:hi], default=0.0)
        for i in range(hi, bisect_right(self.times, t, hi)):
            if self.ids[i] < tx.transaction_id and self.amounts[i] > best:
                best = self.amounts[i]
        return float(best)

    def delayed(self, tx: TxEvent, window_us: int, delay_us: int) -> tuple[int, int]:
        """(transactions, known frauds) with time in [t - d - w, t - d]."""
        lo, hi = tx.t_us - delay_us - window_us, tx.t_us - delay_us
        n = bisect_right(self.times, hi) - bisect_left(self.times, lo)
        k = bisect_right(self.fraud_times, hi) - bisect_left(self.fraud_times, lo) if self.fraud_times else 0
        return n, k


# The spec compiled once into steps: (kind, name, a, b, window_us, delay_us). Windowed aggregates are
# computed once per (entity, window[, delay]) and shared by the features that read them (count and mean,
# count and fraud rate). This runs per transaction in the service and the stream worker.
_ROW, _WIN, _DELAYED, _RATIO = range(4)


def _compile() -> tuple[tuple, ...]:
    steps = []
    for f in FEATURES:
        if f.kind == "row":
            if f.op not in ROW_PY:
                raise ValueError(f"unknown row op {f.op!r} for {f.name}")
            steps.append((_ROW, f.name, ROW_PY[f.op], None, 0, 0))
        elif f.kind == "window":
            if f.agg not in ("count", "mean", "max") or f.entity is None or f.window is None:
                raise ValueError(f"bad window feature {f.name} (agg {f.agg!r})")
            steps.append((_WIN, f.name, f.agg, f.entity, to_us(f.window), 0))
        elif f.kind == "delayed_window":
            if f.agg not in ("count", "fraud_rate") or None in (f.entity, f.window, f.delay):
                raise ValueError(f"bad delayed_window feature {f.name} (agg {f.agg!r})")
            steps.append((_DELAYED, f.name, f.agg == "fraud_rate", f.entity, to_us(f.window), to_us(f.delay)))
        elif f.kind == "ratio":
            if f.numerator is None or f.denominator is None:
                raise ValueError("ratio needs numerator and denominator")
            steps.append((_RATIO, f.name, f.numerator, f.denominator, 0, 0))
        else:
            raise ValueError(f"unknown feature kind {f.kind!r}")
    return tuple(steps)


_STEPS = _compile()
_NO_STATE = EntityState()


def compute_features(tx: TxEvent, states: Mapping[str, EntityState]) -> dict[str, float]:
    """Every spec feature of ``tx`` as of its time, from the entity states (in spec order)."""
    windows = {e: _Window(states.get(e) or _NO_STATE, tx) for e in WINDOW_ENTITIES}
    shared: dict[tuple, tuple] = {}
    out: dict[str, float] = {}
    for kind, name, a, b, w, d in _STEPS:
        if kind == _ROW:
            out[name] = a(tx.amount, tx.tx_datetime)
        elif kind == _WIN:
            if a == "max":
                out[name] = windows[b].earlier_max(tx, w)
                continue
            key = (b, w)
            r = shared.get(key)
            if r is None:
                r = shared[key] = windows[b].trailing(tx, w)
            out[name] = r[1] / r[0] if a == "mean" else float(r[0])
        elif kind == _DELAYED:
            key = (b, w, d)
            r = shared.get(key)
            if r is None:
                r = shared[key] = windows[b].delayed(tx, w, d)
            n, k = r
            out[name] = (k / n if n > 0 else 0.0) if a else float(n)
        else:
            num, den = _ref(a, tx, out), _ref(b, tx, out)
            out[name] = num / den if den > 0 else 0.0
    return out


def _ref(name: str, tx: TxEvent, done: dict[str, float]) -> float:
    if name in done:
        return done[name]
    if name == "tx_amount":
        return tx.amount
    raise ValueError(f"ratio refers to {name!r}, which is neither an earlier feature nor a transaction field")
