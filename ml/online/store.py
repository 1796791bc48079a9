"""Online store: per-entity state for the online features (in-process default, or Redis).

State per entity (customer, terminal): its transactions of the last ``max_lookback(entity)`` (time, id,
amount) and, for entities with a fraud-rate feature, its known frauds (tx time, label time). Per
transaction id: its time and entities, so that a later label can find them. Writes are idempotent by
transaction id, so a retried event does not double count.

The Redis backend (``ml.online.redis_store``) holds the same state in Redis, shared by every replica.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from ml.features.per_transaction import FRAUD_ENTITIES, WINDOW_ENTITIES, EntityState, TxEvent, to_us
from ml.features.vectorised import EMPTY as EMPTY_COLUMNS
from ml.features.vectorised import BatchColumns, EntityColumns, TxColumns
from ml.online.history_buffer import HistoryBuffer


@dataclass(frozen=True)
class Label:
    transaction_id: str
    tx_fraud: int
    label_us: int


SEP = "\x1f"  # joins a window's members and scores in Redis replies; ids must not contain it


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (Redis down): callers decide fail-open or fail-closed."""


class OnlineStore(ABC):
    """Backend interface; ``ml.online.features.OnlineFeatures`` computes features on top of it."""

    def __init__(self, entities: dict[str, timedelta] | None = None,
                 fraud_entities: frozenset[str] | None = None):
        self.lookback_us = {e: to_us(lb) for e, lb in (entities or WINDOW_ENTITIES).items()}
        self.fraud_entities = FRAUD_ENTITIES if fraud_entities is None else fraud_entities

    @abstractmethod
    def process(self, events: Sequence[TxEvent | Label], write: bool = True, read: bool = True) -> list:
        """Apply events in order; per TxEvent its entity states as of its time (None unless ``read``;
        recorded only if ``write``), per Label True, or False if its transaction is unknown."""

    def apply(self, txs: Sequence[TxEvent], write: bool = True, read: bool = True
              ) -> list[dict[str, EntityState] | None]:
        return self.process(txs, write=write, read=read)

    def put_labels(self, labels: Sequence[Label]) -> list[bool]:
        return self.process(labels)

    @abstractmethod
    def apply_columns(self, txs: Sequence[TxEvent] | TxColumns, write: bool = True) -> BatchColumns:
        """Record transactions given in time order (idempotent by id; nothing if not ``write``) and return,
        per entity they touch, its transactions and known frauds as columns after the recording
        (``ml.features.vectorised``)."""

    async def apply_columns_async(self, txs: Sequence[TxEvent] | TxColumns, write: bool = True
                                  ) -> BatchColumns:
        """``apply_columns`` for a caller on an event loop; a store that waits on a server awaits it there
        (Redis), the in-process one has nothing to wait for."""
        return self.apply_columns(txs, write)

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve."""

    @abstractmethod
    def clear(self) -> None:
        """Forget all state (tests, replays)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class _Entity:
    history: HistoryBuffer = field(default_factory=HistoryBuffer)
    frauds: dict[str, tuple[int, int]] = field(default_factory=dict)  # txid -> (tx time, label time)


class MemoryStore(OnlineStore):
    """In-process store (the default): exact, fast, but private to one process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self._entities: dict[tuple[str, str], _Entity] = {}
        self._txs: dict[str, tuple[int, dict[str, str]]] = {}
        self._tx_order: deque[tuple[int, str]] = deque()
        self._latest_us = 0

    def ping(self) -> None:
        return None

    def process(self, events, write=True, read=True):
        out: list = []
        with self._lock:
            for ev in events:
                if isinstance(ev, Label):
                    out.append(self._label(ev))
                    continue
                if write and ev.transaction_id not in self._txs:
                    self._insert(ev)
                out.append(self._read(ev) if read else None)
        return out

    def apply_columns(self, txs: Sequence[TxEvent] | TxColumns, write: bool = True) -> BatchColumns:
        if isinstance(txs, TxColumns):
            txs = [txs.event(k) for k in range(len(txs))]
        with self._lock:
            new = np.zeros(len(txs), bool)
            for k, tx in enumerate(txs):
                if write and tx.transaction_id not in self._txs:
                    self._insert(tx, prune=False)  # pruned after the reads: earlier ones still need it
                    new[k] = True
            index: dict[tuple[str, str], int] = {}
            slots = {e: np.empty(len(txs), np.int64) for e in self.lookback_us}
            for k, tx in enumerate(txs):
                for e in self.lookback_us:
                    slots[e][k] = index.setdefault((e, tx.entities[e]), len(index))
            entities = []
            for key in index:
                ent = self._entities.get(key)
                if ent is None:
                    entities.append(EMPTY_COLUMNS)
                    continue
                times, amounts, ids = ent.history.columns()
                fraud_times, fraud_labels = _fraud_columns(ent.frauds)
                entities.append(EntityColumns(times, amounts, ids, fraud_times, fraud_labels))
            for tx in (tx for k, tx in enumerate(txs) if new[k]):
                self._prune(tx)
        return BatchColumns.of_entities(new, slots, entities)

    def _insert(self, tx: TxEvent, prune: bool = True) -> None:
        self._txs[tx.transaction_id] = (tx.t_us, dict(tx.entities))
        self._tx_order.append((tx.t_us, tx.transaction_id))
        self._latest_us = max(self._latest_us, tx.t_us)
        for e, eid in tx.entities.items():
            if e in self.lookback_us:
                self._entities.setdefault((e, eid), _Entity()).history.add(
                    tx.t_us, tx.amount, tx.transaction_id)
        if prune:
            self._prune(tx)

    def _prune(self, tx: TxEvent) -> None:
        """Forget what no feature can reach any more once ``tx`` is recorded."""
        for e, eid in tx.entities.items():
            ent = self._entities.get((e, eid))
            if ent is None or e not in self.lookback_us:
                continue
            lo = tx.t_us - self.lookback_us[e]
            if ent.history.oldest() < lo:
                ent.history.prune(lo)
                for k in [k for k, (ft, _) in ent.frauds.items() if ft < lo]:
                    del ent.frauds[k]
        # Labels for transactions older than every lookback cannot change a feature: forget them.
        horizon = self._latest_us - max(self.lookback_us.values(), default=0)
        while self._tx_order and self._tx_order[0][0] < horizon:
            _, old = self._tx_order.popleft()
            self._txs.pop(old, None)

    def _read(self, tx: TxEvent) -> dict[str, EntityState]:
        states = {}
        for e, eid in tx.entities.items():
            ent = self._entities.get((e, eid))
            if ent is None or e not in self.lookback_us:
                states[e] = EntityState()
                continue
            lo, hi = tx.t_us - self.lookback_us[e], tx.t_us
            times, amounts, ids = ent.history.columns()
            i, j = np.searchsorted(times, lo, "left"), np.searchsorted(times, hi, "right")
            states[e] = EntityState(columns=(times[i:j].tolist(), ids[i:j].tolist(), amounts[i:j].tolist()),
                                    frauds=[v for v in ent.frauds.values() if lo <= v[0] <= hi])
        return states

    def _label(self, lab: Label) -> bool:
        rec = self._txs.get(lab.transaction_id)
        if rec is None:
            return False
        t_us, ents = rec
        for e in self.fraud_entities:
            if e not in ents:
                continue
            ent = self._entities.setdefault((e, ents[e]), _Entity())
            if lab.tx_fraud == 1:
                ent.frauds[lab.transaction_id] = (t_us, lab.label_us)
            else:
                ent.frauds.pop(lab.transaction_id, None)
        return True


_NO_TIMES = np.empty(0, np.int64)


def _fraud_columns(frauds: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The in-process store's known frauds (txid -> (tx time, label time)) as (tx times, label times)."""
    if not frauds:
        return _NO_TIMES, _NO_TIMES
    pairs = np.array(list(frauds.values()), np.int64)
    return pairs[:, 0], pairs[:, 1]
