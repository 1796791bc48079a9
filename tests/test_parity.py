"""Parity on the simulated data: the online path reproduces every dbt feature of every replayed
transaction, with the in-process store and with Redis (no training/serving skew)."""

from __future__ import annotations

import uuid

from conftest import require_service  # pytest imports tests/conftest.py as `conftest`

from streaming.online_store import MemoryStore, RedisStore, StoreUnavailable
from streaming.parity import replay_parity

DAYS = 3  # compared days (after a warm-up of the longest lookback), enough to cover every window


def test_parity_memory(warehouse) -> None:
    report = replay_parity(warehouse, MemoryStore(), days=DAYS)
    assert report.compared > 1000
    assert report.ok, (report.summary(), report.by_feature, report.examples[:3])


def test_parity_redis(warehouse) -> None:
    store = RedisStore(prefix=f"test-parity:{uuid.uuid4().hex}:")
    try:
        store.ping()
        ok = True
    except StoreUnavailable:
        ok = False
    require_service(ok, "Redis at 127.0.0.1:6379")
    try:
        report = replay_parity(warehouse, store, days=DAYS)
    finally:
        store.clear()
    assert report.compared > 1000
    assert report.ok, (report.summary(), report.by_feature, report.examples[:3])
