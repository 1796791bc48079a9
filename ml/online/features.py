"""Online features: the spec's features for a transaction *now*, from the online store's entity state.

``score_features`` records the transaction (idempotent by id) and returns its features as of its time;
``apply_label`` records a label at its ``label_time``; ``features_at`` reads without changing anything.
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

    def score_features(self, tx: Mapping[str, Any]) -> dict[str, float]:
        """Apply the transaction to the state and return its features as of ``tx_datetime``."""
        return self.score_many([tx])[0]

    def score_many(self, txs: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
        """``score_features`` for several transactions in one store round trip (given in time order)."""
        events = [tx_event(tx) for tx in txs]
        states = self.store.apply(events, write=True, read=True)
        return [compute_features(ev, st or {}) for ev, st in zip(events, states, strict=True)]

    def score_matrix(self, txs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``score_many`` as an (n, features) array in spec order, computed for the whole batch at once
        (``ml.features.vectorised``). Transactions out of time order are applied one by one instead."""
        return self.score_events([tx_event(tx) for tx in txs])

    def score_events(self, events: Sequence[TxEvent], per_tx_below: int | None = None) -> np.ndarray:
        """``score_matrix`` for transactions already normalised (``tx_event``); ``per_tx_below`` as in
        ``compute_batch``."""
        if any(a.t_us > b.t_us for a, b in zip(events, events[1:], strict=False)):
            states = self.store.apply(events, write=True, read=True)
            return np.array([self.vector(compute_features(ev, st or {}))
                             for ev, st in zip(events, states, strict=True)]).reshape(len(events), -1)
        return self.score_columns(TxColumns.of(events), per_tx_below)

    async def score_events_async(self, events: Sequence[TxEvent], per_tx_below: int | None = None
                                 ) -> np.ndarray:
        """``score_events`` for a caller on an event loop: the store's round trips are awaited there, so the
        loop serves other requests meanwhile (transactions out of time order go one by one, on a thread)."""
        if any(a.t_us > b.t_us for a, b in zip(events, events[1:], strict=False)):
            return await asyncio.get_running_loop().run_in_executor(
                None, self.score_events, events, per_tx_below)
        txs = TxColumns.of(events)
        step = getattr(self.store, "max_call_txs", None) or max(len(txs), 1)
        parts = [compute_batch(chunk, await self.store.apply_columns_async(chunk), per_tx_below)
                 for chunk in (txs.slice(i, i + step) for i in range(0, len(txs), step))]
        return np.vstack(parts) if parts else np.empty((0, len(FEATURE_NAMES)))

    def score_columns(self, txs: TxColumns, per_tx_below: int | None = None) -> np.ndarray:
        """``score_events`` for transactions in time order given as columns (bulk scoring): one store call
        per ``max_call_txs`` of them."""
        step = getattr(self.store, "max_call_txs", None) or max(len(txs), 1)
        parts = [compute_batch(chunk, self.store.apply_columns(chunk), per_tx_below)
                 for chunk in (txs.slice(i, i + step) for i in range(0, len(txs), step))]
        return np.vstack(parts) if parts else np.empty((0, len(FEATURE_NAMES)))

    def features_at(self, tx: Mapping[str, Any]) -> dict[str, float]:
        """The transaction's features as of its time, without recording it."""
        return self.features_many([tx])[0]

    def features_many(self, txs: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
        events = [tx_event(tx) for tx in txs]
        states = self.store.apply(events, write=False, read=True)
        return [compute_features(ev, st or {}) for ev, st in zip(events, states, strict=True)]

    def apply_label(self, transaction_id: str, tx_fraud: int, label_time: datetime) -> bool:
        """Record a label known from ``label_time`` on; False if the transaction is unknown to the store."""
        return self.apply_labels([(transaction_id, tx_fraud, label_time)])[0]

    def apply_labels(self, labels: Sequence[tuple[str, int, datetime]]) -> list[bool]:
        return self.store.put_labels([Label(str(tid), int(fraud), to_us(lt)) for tid, fraud, lt in labels])

    @staticmethod
    def vector(features: Mapping[str, float]) -> list[float]:
        """Features in the spec's (= the model's) column order."""
        return [features[n] for n in FEATURE_NAMES]
