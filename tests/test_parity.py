"""Parity on the simulated data: the online path reproduces every dbt feature of every replayed
transaction, with the in-process store and with Redis (no training/serving skew), on the scoring
service's path (batches, numpy) and on the stream worker's (one transaction at a time)."""

from __future__ import annotations

import pytest
from conftest import private_redis_store  # pytest imports tests/conftest.py as `conftest`

from ml.online.parity import replay_parity
from ml.online.store import MemoryStore

DAYS = 3  # compared days (after a warm-up of the longest lookback), enough to cover every window


@pytest.mark.parametrize("batched", [True, False], ids=["service-path", "worker-path"])
def test_parity_memory(warehouse, batched: bool) -> None:
    report = replay_parity(warehouse, MemoryStore(), days=DAYS, batched=batched)
    assert report.compared > 1000
    assert report.ok, (report.summary(), report.by_feature, report.examples[:3])


@pytest.mark.redis
@pytest.mark.parametrize("batched", [True, False], ids=["service-path", "worker-path"])
def test_parity_redis(warehouse, batched: bool) -> None:
    store = private_redis_store("parity")
    try:
        report = replay_parity(warehouse, store, days=DAYS, batched=batched)
    finally:
        store.clear()
    assert report.compared > 1000
    assert report.ok, (report.summary(), report.by_feature, report.examples[:3])
