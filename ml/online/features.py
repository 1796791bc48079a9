"""Online features: the spec's features for a transaction *now*, from the online store's entity state.

``features_for`` records transactions (idempotent by id) and returns each one's features as of its time;
``features_matrix`` does the same for many at once, as an array in the spec's column order (what a model
reads), and ``features_matrix_async`` awaits the store from an event loop; ``peek_features`` reads without
recording anything; ``apply_labels`` records labels, each known from its ``label_time``.
The computation itself is ``ml.features.per_transaction`` (rendered from the same spec as the dbt SQL), and
``ml.online.parity`` proves it matches dbt's rows.

Events must be processed in time order (labels before transactions at the same instant, transactions at
one instant by transaction_id), as the stream worker and the parity replay do. Unknown customers and
terminals simply have no state: they get cold-start features (counts of 1 for this transaction, risk 0).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from ml.features.per_transaction import TxEvent, compute_features, to_us, tx_event
from ml.features.spec import FEATURE_NAMES
from ml.features.vectorised import TxColumns, compute_batch
from ml.online.store import Label, MemoryStore, OnlineStore


class OnlineFeatures:
    def __init__(self, store: OnlineStore | None = None):
        self.store = store if store is not None else MemoryStore()

    def features_for(self, txs: Sequence[Mapping[str, Any] | TxEvent]) -> list[dict[str, float]]:
        """Record the transactions (in time order) and return each one's features as of its time, by name."""
        events = [tx_event(tx) for tx in txs]
        states = self.store.apply(events, write=True, read=True)
        return [compute_features(ev, st or {}) for ev, st in zip(events, states, strict=True)]

    def peek_features(self, txs: Sequence[Mapping[str, Any] | TxEvent]) -> list[dict[str, float]]:
        """The transactions' features as of their times, without recording them."""
        events = [tx_event(tx) for tx in txs]
        states = self.store.apply(events, write=False, read=True)
        return [compute_features(ev, st or {}) for ev, st in zip(events, states, strict=True)]

    def features_matrix(self, txs: Sequence[Mapping[str, Any] | TxEvent] | TxColumns,
                        per_tx_below: int | None = None) -> np.ndarray:
        """``features_for`` as an (n, features) array in spec order, computed for the whole batch at once
        (``ml.features.vectorised``; ``per_tx_below`` as in ``compute_batch``), one store call per
        ``max_call_txs`` transactions. Transactions out of time order are applied one by one instead;
        ``TxColumns`` (bulk scoring) must be in time order."""
        if isinstance(txs, TxColumns):
            return self._columns_matrix(txs, per_tx_below)
        events = [tx_event(tx) for tx in txs]
        if _out_of_order(events):
            states = self.store.apply(events, write=True, read=True)
            return np.array([self.vector(compute_features(ev, st or {}))
                             for ev, st in zip(events, states, strict=True)]).reshape(len(events), -1)
        return self._columns_matrix(TxColumns.of(events), per_tx_below)

    async def features_matrix_async(self, txs: Sequence[Mapping[str, Any] | TxEvent],
                                    per_tx_below: int | None = None) -> np.ndarray:
        """``features_matrix`` for a caller on an event loop: the store's round trips are awaited there, so
        the loop serves other requests meanwhile (transactions out of time order go one by one, on a
        thread)."""
        events = [tx_event(tx) for tx in txs]
        if _out_of_order(events):
            return await asyncio.get_running_loop().run_in_executor(
                None, self.features_matrix, events, per_tx_below)
        columns = TxColumns.of(events)
        step = getattr(self.store, "max_call_txs", None) or max(len(columns), 1)
        parts = [compute_batch(chunk, await self.store.apply_columns_async(chunk), per_tx_below)
                 for chunk in (columns.slice(i, i + step) for i in range(0, len(columns), step))]
        return np.vstack(parts) if parts else np.empty((0, len(FEATURE_NAMES)))

    def _columns_matrix(self, txs: TxColumns, per_tx_below: int | None) -> np.ndarray:
        step = getattr(self.store, "max_call_txs", None) or max(len(txs), 1)
        parts = [compute_batch(chunk, self.store.apply_columns(chunk), per_tx_below)
                 for chunk in (txs.slice(i, i + step) for i in range(0, len(txs), step))]
        return np.vstack(parts) if parts else np.empty((0, len(FEATURE_NAMES)))

    def apply_labels(self, labels: Sequence[tuple[str, int, datetime]]) -> list[bool]:
        """Record labels ``(transaction_id, tx_fraud, label_time)``, each known from its ``label_time`` on;
        False for a transaction the store does not know."""
        return self.store.put_labels([Label(str(tid), int(fraud), to_us(lt)) for tid, fraud, lt in labels])

    @staticmethod
    def vector(features: Mapping[str, float]) -> list[float]:
        """Features in the spec's (= the model's) column order."""
        return [features[n] for n in FEATURE_NAMES]


def _out_of_order(events: Sequence[TxEvent]) -> bool:
    return any(a.t_us > b.t_us for a, b in zip(events, events[1:], strict=False))
