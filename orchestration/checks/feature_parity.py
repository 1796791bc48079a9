"""Online/offline parity: prove the online features equal dbt's training features (no training/serving skew).

Two asset checks on ``fct_transaction_features`` replay the last ``FRAUD_PARITY_DAYS`` days (default 3,
after a warm-up of the longest lookback) of transactions and labels through the scoring service's online
path (each run of transactions recorded in one store call, its features computed with numpy), once per
online-store backend, and compare every feature of every replayed transaction with the dbt row. Any
difference fails the check; so does an unreachable Redis (a check that cannot run has not proven parity).
The stream worker's path (one transaction at a time) is proven the same way by ``tests/test_parity.py``.
"""


import dagster as dg

from ml.online.parity import ParityReport, replay_parity
from ml.online.redis_store import RedisStore
from ml.online.store import MemoryStore, StoreUnavailable
from ml.settings import get_settings
from orchestration.assets import FEATURES_TABLE_KEY


def _days() -> float | None:
    value = get_settings().parity_days
    return None if value in ("all", 0) else float(value)


def _result(report: ParityReport) -> dg.AssetCheckResult:
    examples = "\n".join(f"- `{e['transaction_id']}` {e['tx_datetime']}: {e['features']}"
                         for e in report.examples)
    return dg.AssetCheckResult(
        passed=report.ok,
        metadata={
            "compared_transactions": report.compared,
            "mismatching_transactions": report.mismatches,
            "missing_dbt_rows": report.missing,
            "mismatches_by_feature": report.by_feature,
            "replayed_events": report.events,
            "window": str(report.window),
            "seconds": round(report.seconds, 2),
            "examples": dg.MetadataValue.md(examples or "none"),
        },
        description=report.summary(),
    )


@dg.asset_check(asset=FEATURES_TABLE_KEY, name="online_parity_memory",
                description="Online features (in-process store) == dbt features on replayed days.")
def online_parity_memory() -> dg.AssetCheckResult:
    return _result(replay_parity(get_settings().warehouse, MemoryStore(), days=_days(), backend="memory"))


@dg.asset_check(asset=FEATURES_TABLE_KEY, name="online_parity_redis",
                description="Online features (Redis store) == dbt features on replayed days; fails if "
                "Redis is unreachable.")
def online_parity_redis(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    settings = get_settings()
    store = RedisStore(settings.redis_url.get_secret_value(), prefix=f"parity:{context.run.run_id}:")
    try:
        store.ping()
        return _result(replay_parity(settings.warehouse, store, days=_days(), backend="redis"))
    except StoreUnavailable as exc:
        return dg.AssetCheckResult(passed=False, metadata={"error": str(exc)},
                                   description=f"Redis unreachable, parity not proven: {exc}")
    finally:
        try:
            store.clear()
        except StoreUnavailable:
            pass
        store.close()

