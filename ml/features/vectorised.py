"""The feature spec rendered for many transactions at once (numpy): the batch twin of ``compute_features``.

A store's ``apply_columns`` records a batch and returns, per entity the batch touches, the entity's
transactions as time-sorted columns (the batch's own included) and its known frauds. Every feature of every
transaction is then a vectorised pass: a window is a ``searchsorted`` range in the entities' concatenated
columns. The steps come from the same ``FEATURES`` as the SQL and the per-transaction path.

A transaction that the fast path cannot decide from times alone goes through ``compute_features`` with
states cut from the same columns: a re-delivery (its first record may sit at another time), or another
transaction of one of its entities at the very same instant (the spec orders those by id, and a stream sees
only the ones that arrived before). ``tests/test_batch_features.py`` checks that both paths agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ml.features.per_transaction import (
    _DELAYED,
    _RATIO,
    _ROW,
    _STEPS,
    WINDOW_ENTITIES,
    EntityState,
    TxEvent,
    compute_features,
    from_us,
    to_us,
)
from ml.features.spec import BY_NAME, FEATURE_NAMES

_DAY_US, _HOUR_US = 86_400_000_000, 3_600_000_000
# Small batches may go one by one: numpy has a fixed cost per call, the Python path a cost per history entry.
# Both are in history entries, calibrated through the Redis store (benchmarks/README.md, Feature computation):
# one by one while _PER_TX_COST * transactions + entries < _NUMPY_COST.
PER_TX_BELOW = 8
_PER_TX_COST = 186  # one transaction one by one, beyond numpy's cost per transaction
_NUMPY_COST = 1390  # numpy's fixed cost of a call

# numpy counterparts of ml.features.per_transaction.ROW_PY (times in µs since 1970-01-01, a Thursday: ISO day 4).
ROW_NP = {
    "amount": lambda amount, t_us: amount,
    "weekend": lambda amount, t_us: ((t_us // _DAY_US + 3) % 7 >= 5).astype(np.float64),
    "night": lambda amount, t_us: ((t_us // _HOUR_US) % 24 <= 6).astype(np.float64),
}


@dataclass
class TxColumns:
    """Transactions as columns: what bulk scoring carries instead of one ``TxEvent`` per transaction (building
    and taking apart thousands of tuples cost more than the features of a batch)."""

    ids: list[str]
    t_us: np.ndarray  # int64 µs since 1970-01-01 (UTC)
    amounts: np.ndarray  # float64
    entities: dict[str, list[str]]  # entity column -> per transaction, its id
    events: Sequence[TxEvent] | None = None  # the events these columns came from, if they did

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, txs: Sequence[TxEvent] | TxColumns) -> TxColumns:
        if isinstance(txs, TxColumns):
            return txs
        n = len(txs)
        return cls([tx.transaction_id for tx in txs], np.fromiter((tx.t_us for tx in txs), np.int64, n),
                   np.fromiter((tx.amount for tx in txs), np.float64, n),
                   {e: [tx.entities[e] for tx in txs] for e in WINDOW_ENTITIES}, txs)

    def event(self, k: int) -> TxEvent:
        """Transaction k as an event (the per-transaction path)."""
        if self.events is not None:
            return self.events[k]
        t = int(self.t_us[k])
        return TxEvent(self.ids[k], t, {e: ids[k] for e, ids in self.entities.items()},
                       float(self.amounts[k]), from_us(t))

    def slice(self, i: int, j: int) -> TxColumns:
        return TxColumns(self.ids[i:j], self.t_us[i:j], self.amounts[i:j],
                         {e: ids[i:j] for e, ids in self.entities.items()},
                         None if self.events is None else self.events[i:j])

    def in_time_order(self) -> bool:
        return len(self.t_us) < 2 or bool((self.t_us[1:] >= self.t_us[:-1]).all())


@dataclass
class EntityColumns:
    """One entity's recorded transactions, sorted by time, and its known frauds (tx time, label time)."""

    times: np.ndarray  # int64 µs
    amounts: np.ndarray  # float64
    ids: Sequence[str]
    fraud_times: np.ndarray  # int64 µs
    fraud_labels: np.ndarray  # int64 µs


EMPTY = EntityColumns(np.empty(0, np.int64), np.empty(0), [], np.empty(0, np.int64), np.empty(0, np.int64))


@dataclass
class BatchColumns:
    """What a store returns for a batch of transactions recorded in order (``apply_columns``): per entity
    the batch touches, its transactions and known frauds, every entity's end to end (entity u's are
    ``times[offsets[u]:offsets[u + 1]]``, sorted by time; its frauds likewise by ``fraud_offsets``). Flat
    because the features search them all at once; ``entity(u)`` gives one entity's as views."""

    new: np.ndarray  # bool per transaction: recorded by this call (False: already known, a re-delivery)
    slots: dict[str, np.ndarray]  # entity column -> per transaction, its entity's index u
    times: np.ndarray  # int64 µs
    amounts: np.ndarray  # float64
    offsets: np.ndarray  # int64, one more than there are entities
    fraud_times: np.ndarray  # int64 µs
    fraud_labels: np.ndarray  # int64 µs
    fraud_offsets: np.ndarray
    # Entity u's transaction ids, in the order of its times: built only when asked for, as only the
    # transactions the fast path steps aside for (ties, re-deliveries) need them.
    ids_of: Callable[[int], Sequence[str]]
    # Optional: the entries' (entity, time) keys as ``_Flat`` searches them, key = u * key_span + (time -
    # key_base), sorted. A store that sorted by them already passes them on: each is a pass over every entry.
    keys: np.ndarray | None = None
    key_base: int = 0
    key_span: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def entity(self, u: int) -> EntityColumns:
        i, j = int(self.offsets[u]), int(self.offsets[u + 1])
        fi, fj = int(self.fraud_offsets[u]), int(self.fraud_offsets[u + 1])
        return EntityColumns(self.times[i:j], self.amounts[i:j], self.ids_of(u), self.fraud_times[fi:fj],
                             self.fraud_labels[fi:fj])

    @classmethod
    def of_entities(cls, new: np.ndarray, slots: dict[str, np.ndarray], entities: list[EntityColumns]
                    ) -> BatchColumns:
        """From one ``EntityColumns`` per entity (the in-process store's histories)."""
        entities = entities or [EMPTY]
        return cls(new, slots, np.concatenate([c.times for c in entities]),
                   np.concatenate([c.amounts for c in entities]),
                   offsets_of([len(c.times) for c in entities]),
                   np.concatenate([c.fraud_times for c in entities]),
                   np.concatenate([c.fraud_labels for c in entities]),
                   offsets_of([len(c.fraud_times) for c in entities]), lambda u: entities[u].ids)


def offsets_of(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Where each of consecutive runs of these lengths starts, and the end: [0, l0, l0 + l1, ...]."""
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def entity_keys(lengths: np.ndarray, times: np.ndarray, base: int, span: int) -> np.ndarray:
    """The (entity, time) keys of consecutive runs of entries, one run per entity: u * span + (time - base),
    so that one searchsorted serves every entity. ``times`` must lie in [base, base + span)."""
    if span * max(len(lengths), 1) >= 2**62:
        raise ValueError("batch spans too long a time for one composite key")
    return np.repeat(np.arange(len(lengths), dtype=np.int64) * span - base, lengths) + times


def compute_batch(txs: Sequence[TxEvent] | TxColumns, cols: BatchColumns, per_tx_below: int | None = None
                  ) -> np.ndarray:
    """Every spec feature of every transaction as of its time: an (n, features) array in spec order.
    Fewer than ``per_tx_below`` transactions go one by one; by default, fewer than ``PER_TX_BELOW`` whose
    entities' histories are short enough for that to cost less than numpy's fixed cost."""
    txs = TxColumns.of(txs)
    n = len(txs)
    if per_tx_below is not None:
        one_by_one = n < per_tx_below
    else:  # one by one walks every history entry in Python; numpy's cost hardly depends on them
        one_by_one = n < PER_TX_BELOW and (
            _PER_TX_COST * n + len(cols.times) < _NUMPY_COST)
    if one_by_one:
        out = np.empty((n, len(FEATURE_NAMES)))
        for k in range(n):
            feats = compute_features(txs.event(k), states_of(txs, k, cols))
            out[k] = [feats[name] for name in FEATURE_NAMES]
        return out
    t, amount = txs.t_us, txs.amounts
    flat = _Flat(cols, t)
    out = np.empty((n, len(FEATURE_NAMES)))
    fast = cols.new.copy()
    for e in WINDOW_ENTITIES:  # the fast path holds when the entity's only entry at t is this transaction
        u = cols.slots[e]
        fast &= flat.search(u, 0, "right") - flat.search(u, 0, "left") == 1
    shared: dict[tuple, tuple] = {}
    done: dict[str, np.ndarray] = {}
    for j, (kind, name, a, b, w, d) in enumerate(_STEPS):
        if kind == _ROW:
            col = ROW_NP[BY_NAME[name].op](amount, t)
        elif kind == _DELAYED:
            key = (b, w, d)
            if key not in shared:
                shared[key] = flat.delayed(cols.slots[b], w, d)
            count, frauds = shared[key]
            col = np.divide(frauds, count, out=np.zeros(n), where=count > 0) if a else count.astype(float)
        elif kind == _RATIO:
            num, den = _ref(a, amount, done), _ref(b, amount, done)
            col = np.divide(num, den, out=np.zeros(n), where=den > 0)
        elif a == "max":
            col = flat.earlier_max(cols.slots[b], w)
        else:
            key = (b, w)
            if key not in shared:
                shared[key] = flat.trailing(cols.slots[b], w, amount)
            count, total = shared[key]
            col = total / count if a == "mean" else count.astype(np.float64)
        out[:, j] = col
        done[name] = col
    for k in np.flatnonzero(~fast).tolist():  # rare: re-deliveries and same-instant peers, one by one
        feats = compute_features(txs.event(k), states_of(txs, k, cols))
        out[k] = [feats[name] for name in FEATURE_NAMES]
    return out


def _ref(name: str, amount: np.ndarray, done: dict[str, np.ndarray]) -> np.ndarray:
    if name in done:
        return done[name]
    if name == "tx_amount":
        return amount
    raise ValueError(f"ratio refers to {name!r}, which is neither an earlier feature nor a transaction field")


class _Flat:
    """The batch's entity columns end to end, keyed (entity slot, time) so one searchsorted serves all; the
    positions of the batch's times (shifted by a window or delay) in them, each searched once."""

    def __init__(self, cols: BatchColumns, t: np.ndarray):
        reach = max((to_us(lb) for lb in WINDOW_ENTITIES.values()), default=0)
        low, high = int(t.min()) - reach, int(t.max())
        if len(cols.fraud_times):
            low, high = min(low, int(cols.fraud_times.min())), max(high, int(cols.fraud_times.max()))
        # The store's keys serve if their range holds every searched time (they hold every entry's).
        given = cols.keys is not None and cols.key_base <= low and cols.key_base + cols.key_span > high
        if given:
            self.base, self.span = cols.key_base, cols.key_span
        else:
            if len(cols.times):
                low, high = min(low, int(cols.times.min())), max(high, int(cols.times.max()))
            self.base, self.span = low, high - low + 1
        lengths = np.diff(cols.offsets)
        self.keys = cols.keys if given else entity_keys(lengths, cols.times, self.base, self.span)
        entity = np.arange(len(cols), dtype=np.int64)
        self.t = t
        self._found: dict[tuple, np.ndarray] = {}
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # One trailing 0 so that an index equal to the length is valid for reduceat.
        self.amounts = np.append(cols.amounts, 0.0)
        f_owner = np.repeat(entity, np.diff(cols.fraud_offsets))
        f_keys = f_owner * self.span + (cols.fraud_times - self.base)
        order = np.argsort(f_keys, kind="stable")
        self.f_keys, self.f_labels = f_keys[order], cols.fraud_labels[order]

    def search(self, slot: np.ndarray, back: int, side: str, frauds: bool = False) -> np.ndarray:
        """Positions of time t - back in each row's entity (its known frauds instead of its history if
        ``frauds``). The windows of an entity share their bounds, so each search is done once."""
        key = (id(slot), back, side, frauds)
        found = self._found.get(key)
        if found is None:
            # Searched in key order, put back in row order: the search then walks the keys in order, not at random.
            at = self._sorted.get(id(slot))
            if at is None:
                where = slot * self.span + (self.t - self.base)
                order = np.argsort(where, kind="stable")
                at = self._sorted[id(slot)] = (order, where[order])
            order, where = at
            found = self._found[key] = np.empty(len(order), np.int64)
            found[order] = np.searchsorted(self.f_keys if frauds else self.keys, where - back, side)
        return found

    def trailing(self, slot, w, amount) -> tuple[np.ndarray, np.ndarray]:
        """(count, sum) of the earlier transactions in [t - w, t) plus this one (fast-path rows)."""
        lo, hi = self.search(slot, w, "left"), self.search(slot, 0, "left")
        return hi - lo + 1, _reduce(np.add, self.amounts, lo, hi, 0.0) + amount

    def earlier_max(self, slot, w) -> np.ndarray:
        lo, hi = self.search(slot, w, "left"), self.search(slot, 0, "left")
        return _reduce(np.maximum, self.amounts, lo, hi, 0.0)

    def delayed(self, slot, w, d) -> tuple[np.ndarray, np.ndarray]:
        """(transactions, frauds known at t) with time in [t - d - w, t - d]."""
        t = self.t
        count = self.search(slot, d, "right") - self.search(slot, d + w, "left")
        f_lo = self.search(slot, d + w, "left", frauds=True)
        f_hi = self.search(slot, d, "right", frauds=True)
        lengths = f_hi - f_lo
        total = int(lengths.sum())
        frauds = np.zeros(len(t), np.int64)
        if total:  # each (transaction, fraud in its window) pair, kept if the label was known at t
            row = np.repeat(np.arange(len(t)), lengths)
            pos = f_lo[row] + np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            known = self.f_labels[pos] <= t[row]
            frauds = np.bincount(row[known], minlength=len(t))
        return count, frauds


def _reduce(ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, empty: float) -> np.ndarray:
    """``ufunc`` over values[lo:hi] per row (``empty`` where the range is empty). ``values`` ends with one
    padding element, so that hi may equal the data length."""
    if not len(lo):
        return np.empty(0)
    # reduceat also reduces the gaps between consecutive ranges: in order of lo, the gaps add up to at most
    # the data once (in query order, each could span most of it).
    order = np.argsort(lo, kind="stable")
    idx = np.empty(2 * len(lo), np.int64)
    idx[0::2], idx[1::2] = lo[order], hi[order]
    out = np.empty(len(lo))
    out[order] = ufunc.reduceat(values, idx)[0::2]
    return np.where(hi > lo, out, empty)


def states_of(txs: TxColumns, k: int, cols: BatchColumns) -> dict[str, EntityState]:
    """The entity states ``compute_features`` needs for transaction k, as if the batch ran one by one:
    its window of each entity, without the same-instant transactions this call recorded after it."""
    ids, times = txs.ids, txs.t_us
    t = int(times[k])
    later = set()
    for m in range(k + 1, len(ids)):
        if times[m] != t:
            break
        if cols.new[m]:
            later.add(ids[m])
    states = {}
    for e, lookback in WINDOW_ENTITIES.items():
        c = cols.entity(int(cols.slots[e][k]))
        lo = t - to_us(lookback)
        i, j = np.searchsorted(c.times, lo, "left"), np.searchsorted(c.times, t, "right")
        # Slices turned into lists at once: indexing numpy element by element is slow.
        times, ids, amounts = c.times[i:j].tolist(), list(c.ids[i:j]), c.amounts[i:j].tolist()
        if later:
            keep = [p for p, tid in enumerate(ids) if tid not in later]
            times, ids, amounts = [times[p] for p in keep], [ids[p] for p in keep], [amounts[p] for p in keep]
        in_window = (c.fraud_times >= lo) & (c.fraud_times <= t)
        history = (times, ids, amounts)
        frauds = zip(c.fraud_times[in_window].tolist(), c.fraud_labels[in_window].tolist(), strict=True)
        states[e] = EntityState(columns=history, frauds=list(frauds))
    return states
