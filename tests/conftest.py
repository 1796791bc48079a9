"""Shared fixtures: a small simulated warehouse built through the real Dagster assets and dbt.

The environment is set before any project module is imported, so every test (and Dagster's partitions and
resources, which read settings at import) uses a private temp data directory and a small simulation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_DATA = Path(tempfile.mkdtemp(prefix="fraud-tests-"))
os.environ["FRAUD_DATA_DIR"] = str(_DATA)
os.environ.pop("FRAUD_WAREHOUSE", None)
os.environ.pop("BENTOML_HOME", None)
os.environ["DAGSTER_HOME"] = str(_DATA / "dagster_home")
(_DATA / "dagster_home").mkdir(parents=True, exist_ok=True)
os.environ.setdefault("FRAUD_SOURCE", "simulator")
# Small simulation: 60 days, a few hundred cards -> ~35k transactions, built in seconds.
SMALL = {
    "FRAUD_SIM_CUSTOMERS": "400",
    "FRAUD_SIM_TERMINALS": "800",
    "FRAUD_SIM_DAYS": "60",
    "FRAUD_START_DATE": "2018-04-01",
    "FRAUD_END_DATE": "2018-05-31",
}
for _k, _v in SMALL.items():
    os.environ[_k] = _v

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(available: bool, what: str) -> None:
    """Missing Redis/broker: a failure in CI, a skip on a laptop without it."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but not reachable")
    pytest.skip(f"{what} not reachable")


def private_redis_store(name: str):
    """A RedisStore under a fresh key prefix (the caller clears it); Redis missing -> require_service."""
    import uuid

    from ml.online.redis_store import RedisStore
    from ml.online.store import StoreUnavailable

    store = RedisStore(prefix=f"test-{name}:{uuid.uuid4().hex}:")
    try:
        store.ping()
        ok = True
    except StoreUnavailable:
        ok = False
    require_service(ok, "Redis at 127.0.0.1:6379")
    return store


@pytest.fixture(scope="session")
def warehouse() -> Path:
    """Materialize raw_transactions (all days) and the dbt feature models once; return the DuckDB path."""
    from ml.settings import get_settings
    from orchestration.demo import materialize
    from orchestration.partitions import daily_partitions
    from orchestration.resources import prepare_dbt_project

    prepare_dbt_project()  # the manifest the dbt assets are loaded from (before the definitions are)
    keys = daily_partitions.get_partition_keys()
    assert materialize("raw_transactions", partition_range=(keys[0], keys[-1])).success
    assert materialize("group:features").success
    return get_settings().warehouse
