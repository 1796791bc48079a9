"""Parity: replay the warehouse's transactions and labels through the online path and compare every
feature of every replayed transaction with dbt's ``main.fct_transaction_features`` row.

This is the proof of no training/serving skew: any difference is a failure. Both sides are read from the
feature snapshot (``ml.data.warehouse``; the warehouse read-only where there is none). Labels are emitted at
their ``label_time`` (before transactions at the same instant); a label
whose transaction has the same time is emitted right after it (it cannot change any feature at that
instant, since the delayed windows end ``RISK_DELAY`` earlier). To keep a check fast on large data, only the
last ``days`` days are compared; the state is warmed up from ``max_lookback`` before them (written, not read).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path

import duckdb

from ml.data.warehouse import features_connection, time_range
from ml.features.per_transaction import WINDOW_ENTITIES, TxEvent, compute_features, to_us
from ml.features.spec import FEATURE_NAMES, FEATURES_TABLE
from ml.online.features import OnlineFeatures
from ml.online.store import Label, OnlineStore

REL_TOL = ABS_TOL = 1e-9
CHUNK = 2000  # events per store call (one Redis pipeline)


@dataclass
class ParityReport:
    backend: str
    compared: int = 0
    mismatches: int = 0  # transactions with at least one differing feature
    missing: int = 0  # replayed transactions without a dbt row
    by_feature: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    events: int = 0
    seconds: float = 0.0
    window: tuple[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.compared > 0 and self.mismatches == 0 and self.missing == 0

    def summary(self) -> str:
        return (f"{self.backend}: {self.compared:,} transactions x {len(FEATURE_NAMES)} features compared, "
                f"{self.mismatches} mismatching, {self.missing} missing, {self.events:,} events in "
                f"{self.seconds:.1f}s")


def _load(con: duckdb.DuckDBPyConnection, since: datetime | None, until: datetime | None):
    where, params = time_range(since, until)
    sql = ("select cast(transaction_id as varchar), cast(tx_datetime as timestamp),"
           " cast(customer_id as varchar), cast(terminal_id as varchar), cast(tx_amount as double),"
           " cast(tx_fraud as integer),"
           f" cast(label_time as timestamp) from {FEATURES_TABLE}" + where)
    return con.execute(sql, params).fetchall()


def _events(rows, label_until: datetime | None) -> list[tuple[tuple, TxEvent | Label]]:
    """Time-ordered events: (sort key, event). Labels before transactions at one instant."""
    out: list[tuple[tuple, TxEvent | Label]] = []
    for tid, t, cust, term, amount, fraud, label_time in rows:
        t_us = to_us(t)
        ev = TxEvent(tid, t_us, {"customer_id": cust, "terminal_id": term}, float(amount), t)
        out.append(((t_us, 1, tid), ev))
        if fraud is None or label_time is None or (label_until is not None and label_time > label_until):
            continue
        l_us = to_us(label_time)
        key = (l_us, 0, tid) if l_us > t_us else (t_us, 2, tid)
        out.append((key, Label(tid, int(fraud), l_us)))
    out.sort(key=lambda kv: kv[0])
    return out


def replay_parity(warehouse: str | Path, store: OnlineStore, days: float | None = None,
                  limit: int | None = None, backend: str | None = None, batched: bool = True) -> ParityReport:
    """Replay and compare. ``days``: compare the last N days (None: all); ``limit``: at most N compared.

    ``batched``: the scoring service's path (each run of transactions between labels recorded in one call
    and computed at once, ``ml.features.vectorised``); else the stream worker's (``compute_features`` per
    transaction on the states the store returns)."""
    assert set(WINDOW_ENTITIES) == {"customer_id", "terminal_id"}, "parity replay reads these entity columns"
    t0 = time.perf_counter()
    report = ParityReport(backend=backend or type(store).__name__)
    # The feature snapshot (or the warehouse read-only when there is none): both sides of the comparison
    # come from one feature build, and a dbt build can run meanwhile.
    with features_connection(warehouse) as con:
        lo, hi = con.execute(
            f"select min(tx_datetime), max(tx_datetime) from {FEATURES_TABLE}").fetchone()
        if lo is None:
            return report
        start = lo if days is None else max(lo, hi - timedelta(days=days))
        warm_from = start - max(WINDOW_ENTITIES.values()) if days is not None else None
        rows = _load(con, warm_from, None)
        events = _events(rows, label_until=hi)
        compare_ids = sorted((r[1], r[0]) for r in rows if r[1] >= start)
        if limit is not None:
            compare_ids = compare_ids[:limit]
        wanted = {tid for _, tid in compare_ids}
        stop = to_us(compare_ids[-1][0]) if compare_ids else -1
        cols = ", ".join(FEATURE_NAMES)
        dbt = {r[0]: r[1:] for r in con.execute(
            f"select transaction_id, {cols} from {FEATURES_TABLE} where tx_datetime >= ?",
            [start]
        ).fetchall() if r[0] in wanted}
    report.window = (str(start), str(hi))
    store.clear()
    by_feature: Counter[str] = Counter()
    pending: list[TxEvent | Label] = []

    online = OnlineFeatures(store)

    def flush(read: bool) -> None:
        if not pending:
            return
        if read and batched:
            for is_tx, run in groupby(pending, key=lambda ev: isinstance(ev, TxEvent)):
                events = list(run)
                if not is_tx:
                    store.process(events)
                    continue
                # numpy even for one transaction: the per-transaction code is the worker path's to prove
                for ev, row in zip(events, online.features_matrix(events, per_tx_below=0), strict=True):
                    if ev.transaction_id in wanted:
                        feats = dict(zip(FEATURE_NAMES, row.tolist(), strict=True))
                        _compare(ev, feats, dbt.get(ev.transaction_id), report, by_feature)
        else:
            results = store.process(pending, write=True, read=read)
            for ev, res in zip(pending, results, strict=True):
                if isinstance(ev, TxEvent) and ev.transaction_id in wanted:
                    feats = compute_features(ev, res or {})
                    _compare(ev, feats, dbt.get(ev.transaction_id), report, by_feature)
        report.events += len(pending)
        pending.clear()

    reading = False
    start_us = to_us(start)
    for key, ev in events:
        if key[0] > stop:
            break
        now_reading = key[0] >= start_us
        if now_reading != reading:
            flush(reading)
            reading = now_reading
        pending.append(ev)
        if len(pending) >= CHUNK:
            flush(reading)
    flush(reading)
    report.by_feature = dict(by_feature)
    report.seconds = time.perf_counter() - t0
    return report


def _compare(ev: TxEvent, online: dict[str, float], row: tuple | None, report: ParityReport,
             by_feature: Counter[str]) -> None:
    if row is None:
        report.missing += 1
        return
    report.compared += 1
    bad = {}
    for name, want in zip(FEATURE_NAMES, row, strict=True):
        got = online[name]
        if want is None or not math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            bad[name] = {"online": got, "dbt": want}
            by_feature[name] += 1
    if bad:
        report.mismatches += 1
        if len(report.examples) < 10:
            report.examples.append({"transaction_id": ev.transaction_id, "tx_datetime": str(ev.tx_datetime),
                                    "features": bad})
