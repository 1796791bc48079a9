"""Shared fixtures: a small simulated warehouse built through the real Dagster assets and dbt.

The environment is set before any project module is imported, so every test (and Dagster's partitions and
resources, which read settings at import) uses a private temp data directory and a small simulation.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
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


def model_state(model) -> dict[str, Any]:
    """A comparable fingerprint of a River model (``ml.online.river_model.OnlineModel``): its learnt parameters
    and counters, to compare the outcomes of two stream runs."""
    return {"n_learned": model.n_learned, "n_frauds": model.n_frauds, "drifts": model.drifts,
            # nan != nan: compare missing champion scores as None
            "recent": [(y, p, None if math.isnan(q) else q) for y, p, q in model.recent],
            "model": _canonical(model.model)}


def _canonical(obj: Any, depth: int = 0) -> Any:
    """Plain nested values of an object graph (pickle bytes also depend on object identity)."""
    if depth > 30:
        return repr(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {repr(k): _canonical(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0]))}
    if isinstance(obj, list | tuple | deque):
        return [_canonical(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__dict__"):
        return [type(obj).__name__, _canonical(vars(obj), depth + 1)]
    return repr(obj)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session warehouse (directly or through another fixture) is in the pipeline tier."""
    for item in items:
        if "warehouse" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pipeline)


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
