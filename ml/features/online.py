"""Render the feature spec for the online path: the Python counterpart of ``ml.features.sql``.

``ml.features.sql`` turns each spec feature into SQL over the whole table; this module turns it into a
computation over one transaction plus the entity state an online store holds (the entity's recent
transactions and its known frauds). Both follow the time semantics in ``ml.features.spec``'s docstring;
``streaming.parity`` replays the data through this path and compares with dbt's rows.

Times are integers (microseconds since the Unix epoch, UTC) so that window bounds compare exactly, as
DuckDB's microsecond timestamps do.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ml.features.spec import FEATURES, Feature, max_lookback

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


@dataclass(frozen=True)
class TxEvent:
    transaction_id: str
    t_us: int
    entities: Mapping[str, str]  # entity column -> id, e.g. {"customer_id": "C1", "terminal_id": "T9"}
    amount: float
    tx_datetime: datetime


def tx_event(tx: Mapping[str, Any]) -> TxEvent:
    """A transaction dict (contract keys) -> the normalised event the stores and the computation use."""
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
    """One entity's history as parallel sorted arrays, with the current transaction excluded."""

    def __init__(self, state: EntityState, tx: TxEvent):
        rows = [h for h in state.history if h[1] != tx.transaction_id]
        self.times = [h[0] for h in rows]
        self.ids = [h[1] for h in rows]
        self.amounts = [h[2] for h in rows]
        self.fraud_times = sorted(ft for ft, lt in state.frauds if lt <= tx.t_us)

    def trailing(self, tx: TxEvent, window_us: int) -> tuple[int, float]:
        """Earlier transactions in [t - w, t] (same-instant peers with a smaller id), plus this one."""
        lo = bisect_left(self.times, tx.t_us - window_us)
        hi = bisect_left(self.times, tx.t_us)
        # Same-instant peers sort by id: those with a smaller id came first and are seen.
        hi_peer = bisect_right(self.times, tx.t_us)
        seen = hi + sum(1 for i in range(hi, hi_peer) if self.ids[i] < tx.transaction_id)
        if seen > hi:
            amounts = self.amounts[lo:hi] + [a for i, a in enumerate(self.amounts[hi:hi_peer], hi)
                                             if self.ids[i] < tx.transaction_id]
        else:
            amounts = self.amounts[lo:hi]
        return len(amounts) + 1, math.fsum(amounts) + tx.amount

    def delayed(self, tx: TxEvent, window_us: int, delay_us: int) -> tuple[int, int]:
        """(transactions, known frauds) with time in [t - d - w, t - d]."""
        lo, hi = tx.t_us - delay_us - window_us, tx.t_us - delay_us
        n = bisect_right(self.times, hi) - bisect_left(self.times, lo)
        k = bisect_right(self.fraud_times, hi) - bisect_left(self.fraud_times, lo)
        return n, k


def compute_features(tx: TxEvent, states: Mapping[str, EntityState]) -> dict[str, float]:
    """Every spec feature of ``tx`` as of its time, from the entity states (in spec order)."""
    windows = {e: _Window(states.get(e, EntityState()), tx) for e in WINDOW_ENTITIES}
    out: dict[str, float] = {}
    for f in FEATURES:
        out[f.name] = _one(f, tx, windows, out)
    return out


def _one(f: Feature, tx: TxEvent, windows: dict[str, _Window], done: dict[str, float]) -> float:
    if f.kind == "row":
        assert f.op is not None
        return ROW_PY[f.op](tx.amount, tx.tx_datetime)
    if f.kind == "window":
        assert f.entity is not None and f.window is not None
        n, total = windows[f.entity].trailing(tx, to_us(f.window))
        if f.agg == "count":
            return float(n)
        if f.agg == "mean":
            return total / n
        raise ValueError(f"unknown window agg {f.agg!r} for {f.name}")
    if f.kind == "delayed_window":
        assert f.entity is not None and f.window is not None and f.delay is not None
        n, k = windows[f.entity].delayed(tx, to_us(f.window), to_us(f.delay))
        if f.agg == "count":
            return float(n)
        if f.agg == "fraud_rate":
            return k / n if n > 0 else 0.0
        raise ValueError(f"unknown delayed_window agg {f.agg!r} for {f.name}")
    if f.kind == "ratio":
        num, den = _ref(f.numerator, tx, done), _ref(f.denominator, tx, done)
        return num / den if den > 0 else 0.0
    raise ValueError(f"unknown feature kind {f.kind!r}")


def _ref(name: str | None, tx: TxEvent, done: dict[str, float]) -> float:
    if name is None:
        raise ValueError("ratio needs numerator and denominator")
    if name in done:
        return done[name]
    if name == "tx_amount":
        return tx.amount
    raise ValueError(f"ratio refers to {name!r}, which is neither an earlier feature nor a transaction field")
