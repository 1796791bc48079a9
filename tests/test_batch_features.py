"""The batch rendering of the spec (``ml.features.vectorised``) gives every transaction the features the
per-transaction path gives it one at a time, on both stores.

Random streams with what makes the fast path step aside: same-instant peers (ids that sort either way),
re-delivered transactions, labels between batches (known before, at and after the transactions), window
bounds hit exactly. For Redis also several replicas sharing one Redis (each must see every other's writes,
labels and prunes at once) and state wiped under a store.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import numpy as np
import pytest
from conftest import private_redis_store

from ml.features import vectorised as batch_features
from ml.features.per_transaction import compute_features, tx_event
from ml.features.spec import FEATURE_NAMES
from ml.online.features import OnlineFeatures
from ml.online.redis_store import RedisStore
from ml.online.store import Label, MemoryStore

T0 = datetime(2018, 4, 2)
D = timedelta(days=1)


def _stream(seed: int, n: int = 600) -> list[dict]:
    """Transactions in time order over ~45 days on a few entities, with ties and exact window bounds."""
    rng = random.Random(seed)
    t, txs = T0, []
    for k in range(n):
        r = rng.random()
        if r < 0.15:
            pass  # same instant as the previous one
        elif r < 0.25:
            t += rng.choice([D, 7 * D, timedelta(hours=1)])  # exactly one window later
        else:
            t += timedelta(seconds=rng.randrange(1, 12_000))
        tid = f"{rng.choice(['a', 'b', 'z'])}{rng.randrange(100_000)}-{k}"  # peers sort either way
        txs.append({"transaction_id": tid, "tx_datetime": t, "customer_id": f"C{rng.randrange(6)}",
                    "terminal_id": f"T{rng.randrange(4)}", "tx_amount": round(rng.uniform(0, 300), 2)})
        if rng.random() < 0.03 and len(txs) > 2:  # a re-delivery, at its own time when that keeps the order
            dup = dict(rng.choice(txs[-3:]))
            if dup["tx_datetime"] == t:
                txs.append(dup)
    return txs


def _labels(txs: list[dict], seed: int) -> list[tuple[str, int, datetime]]:
    rng = random.Random(seed)
    return [(tx["transaction_id"], int(rng.random() < 0.4), tx["tx_datetime"] + rng.choice([0, 1, 7, 8]) * D)
            for tx in txs if rng.random() < 0.3]


def _run(online: OnlineFeatures, txs: list[dict], labels: list, batch: int, one_by_one: bool = False
         ) -> np.ndarray:
    """Apply the stream in batches (or the same batches one transaction at a time), the labels whose time
    has come before each batch."""
    pending = sorted(labels, key=lambda lab: lab[2])
    rows: list = []
    for i in range(0, len(txs), batch):
        chunk = txs[i:i + batch]
        due = [lab for lab in pending if lab[2] <= chunk[0]["tx_datetime"]]
        pending = pending[len(due):]
        if due:
            online.apply_labels(due)
        if one_by_one:
            rows.extend(online.vector(online.features_for([tx])[0]) for tx in chunk)
        else:
            rows.extend(online.features_matrix(chunk))
    return np.array(rows)


def _assert_same(got: np.ndarray, want: np.ndarray, txs: list[dict]) -> None:
    assert got.shape == want.shape == (len(txs), len(FEATURE_NAMES))
    bad = np.argwhere(~np.isclose(got, want, rtol=1e-9, atol=1e-9))
    examples = [(txs[r]["transaction_id"], FEATURE_NAMES[c], got[r, c], want[r, c]) for r, c in bad[:5]]
    assert not len(bad), examples


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_memory_batches_equal_one_by_one(seed: int, batch: int, monkeypatch) -> None:
    monkeypatch.setattr(batch_features, "PER_TX_BELOW", 0)  # numpy even for a batch of one
    txs, labels = _stream(seed), _labels(_stream(seed), seed)
    want = _run(OnlineFeatures(MemoryStore()), txs, labels, batch, one_by_one=True)
    _assert_same(_run(OnlineFeatures(MemoryStore()), txs, labels, batch), want, txs)


@pytest.mark.redis
@pytest.mark.parametrize("seed", [1, 2])
def test_redis_batches_equal_one_by_one(seed: int) -> None:
    txs, labels = _stream(seed), _labels(_stream(seed), seed)
    want = _run(OnlineFeatures(MemoryStore()), txs, labels, 50, one_by_one=True)
    store = private_redis_store(f"batch{seed}")
    store.max_call_txs = 23  # several calls per batch
    try:
        _assert_same(_run(OnlineFeatures(store), txs, labels, 50), want, txs)
        held = sum(store.client.strlen(k) for k in store.client.scan_iter(f"{store.prefix}h:*")) // 16
        recorded = 2 * len({tx["transaction_id"] for tx in txs})  # an entry per entity
        assert held < recorded, "entries too old for any feature were pruned"
    finally:
        store.clear()


@pytest.mark.redis
def test_redis_replicas_see_changes_made_elsewhere() -> None:
    """Three replicas share one Redis and take turns, labels landing through another one; the third scores
    through ``process`` with a label in the call (the stream worker's path). Every replica's features equal
    the one-by-one reference."""
    txs, labels = _stream(7, 400), _labels(_stream(7, 400), 7)
    want = _run(OnlineFeatures(MemoryStore()), txs, labels, 9, one_by_one=True)
    a = private_redis_store("replicas")
    b, c = RedisStore(prefix=a.prefix), RedisStore(prefix=a.prefix)
    replicas = [OnlineFeatures(a), OnlineFeatures(b), OnlineFeatures(c)]
    pending = sorted(labels, key=lambda lab: lab[2])
    rows: list = []
    try:
        for n, i in enumerate(range(0, len(txs), 9)):
            chunk = txs[i:i + 9]
            due = [lab for lab in pending if lab[2] <= chunk[0]["tx_datetime"]]
            pending = pending[len(due):]
            online = replicas[n % 3]
            if due:
                replicas[(n + 1) % 3].apply_labels(due)  # labels land through another replica
            if online.store is c:  # a label and transactions in one call
                events = [tx_event(tx) for tx in chunk]
                states = c.process([Label("unknown", 0, 0), *events])[1:]
                for ev, st in zip(events, states, strict=True):
                    rows.append(online.vector(compute_features(ev, st)))
            else:
                rows.extend(online.features_matrix(chunk))
        _assert_same(np.array(rows), want, txs)
    finally:
        a.clear()


@pytest.mark.redis
@pytest.mark.parametrize("seed", [4, 5])
def test_redis_replicas_in_random_turns(seed: int) -> None:
    """Two replicas take turns at random (chunks of varied size, labels through either, each pruning what
    the other wrote), and their features equal the one-by-one reference."""
    rng = random.Random(seed)
    txs, labels = _stream(seed, 500), _labels(_stream(seed, 500), seed)
    chunks, i = [], 0
    while i < len(txs):
        chunks.append(txs[i:i + rng.choice([1, 2, 5, 9, 30])])
        i += len(chunks[-1])
    turns = [(rng.randrange(2), rng.randrange(2)) for _ in chunks]  # (scoring replica, labelling replica)
    a = private_redis_store("turns")
    b = RedisStore(prefix=a.prefix)
    replicas, reference = [OnlineFeatures(a), OnlineFeatures(b)], OnlineFeatures(MemoryStore())
    pending = sorted(labels, key=lambda lab: lab[2])
    rows, want = [], []
    try:
        for chunk, (scorer, labeller) in zip(chunks, turns, strict=True):
            due = [lab for lab in pending if lab[2] <= chunk[0]["tx_datetime"]]
            pending = pending[len(due):]
            if due:
                replicas[labeller].apply_labels(due)
                reference.apply_labels(due)
            rows.extend(replicas[scorer].features_matrix(chunk))
            want.extend(reference.vector(reference.features_for([tx])[0]) for tx in chunk)
        _assert_same(np.array(rows), np.array(want), txs)
    finally:
        a.clear()


@pytest.mark.redis
def test_redis_state_wiped_under_the_store() -> None:
    """State wiped under the store (a Redis restart without persistence): nothing of it is seen again."""
    store = private_redis_store("flush")
    online = OnlineFeatures(store)
    tx = {"transaction_id": "x1", "tx_datetime": T0, "customer_id": "C", "terminal_id": "T",
          "tx_amount": 10.0}
    try:
        online.features_matrix([tx])
        store.client.unlink(*store.client.scan_iter(f"{store.prefix}*"))
        again = {**tx, "transaction_id": "x2", "tx_datetime": T0 + timedelta(minutes=1)}
        row = dict(zip(FEATURE_NAMES, online.features_matrix([again])[0], strict=True))
        assert row["customer_nb_tx_1h"] == 1.0  # x1 is gone with the flush
    finally:
        store.clear()
