"""`make demo`: materialize the pipeline end to end in the persistent Dagster instance, then summarise.

Runs are recorded in DAGSTER_HOME (data/dagster_home by default), so `make ui` shows them afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Sequence

import dagster as dg

from ml.settings import get_settings


def instance() -> dg.DagsterInstance:
    home = os.environ.setdefault("DAGSTER_HOME", str(get_settings().data_dir / "dagster_home"))
    os.makedirs(home, exist_ok=True)
    return dg.DagsterInstance.get()


def run(selection: str | Sequence[str], partition_key: str | None = None,
        partition_range: tuple[str, str] | None = None) -> dg.ExecuteInProcessResult:
    """Materialize a selection of the code location's assets (with their checks) in one run."""
    from orchestration.definitions import defs

    tags = {}
    if partition_range:
        tags = {"dagster/asset_partition_range_start": partition_range[0],
                "dagster/asset_partition_range_end": partition_range[1]}
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance(),
        asset_selection=list(dg.AssetSelection.from_coercible(selection).resolve(defs.resolve_asset_graph())),
        partition_key=partition_key,
        tags=tags,
        # Warnings and errors only on the console; the full event log is in the instance (`make ui`).
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def _quiet(selection: str, **kwargs: object) -> dg.ExecuteInProcessResult:
    """``run`` with stdout captured: dagster-dbt echoes every dbt event ("Completed successfully",
    "Done. PASS=70 ...") to stdout. The events are in the instance anyway; shown here only on failure."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = run(selection, **kwargs)  # type: ignore[arg-type]
    if not result.success:
        sys.stdout.write(buf.getvalue()[-5000:])
    return result


def _fail(step: str, result: dg.ExecuteInProcessResult) -> None:
    failures = [e.message for e in result.all_events if e.is_failure]
    raise SystemExit(f"[demo] {step} failed: {failures[-1] if failures else 'see `make ui`'}")


def main() -> None:
    from orchestration.assets.training import demo_partition
    from orchestration.resources import daily_partitions

    settings = get_settings()
    keys = daily_partitions.get_partition_keys()
    t0 = time.perf_counter()
    print(f"[demo] ingest {keys[0]}..{keys[-1]} from {settings.source}", flush=True)
    ingest = run("raw_transactions", partition_range=(keys[0], keys[-1]))
    if not ingest.success:
        _fail("ingest", ingest)
    meta = ingest.asset_materializations_for_node("raw_transactions")[0].metadata
    t1 = time.perf_counter()
    print("[demo] dbt features", flush=True)
    features = _quiet("group:features")
    if not features.success:
        _fail("features", features)
    t2 = time.perf_counter()
    print(
        f"[demo] rows={meta['rows'].value:,} frauds={meta['frauds'].value:,} "
        f"quarantined={meta['quarantined'].value:,} ingest={t1 - t0:.1f}s features={t2 - t1:.1f}s", flush=True
    )
    day = demo_partition()
    print(f"[demo] training, evaluation and champion gate for D={day}", flush=True)
    training = run("group:training", partition_key=day)
    if not training.success:
        _fail("training", training)
    print(training_summary(training, time.perf_counter() - t2))


def training_summary(result: dg.ExecuteInProcessResult, seconds: float) -> str:
    """The champion's figures from the training run's materializations."""
    model = result.asset_materializations_for_node("xgb_model")[0].metadata
    ev = result.asset_materializations_for_node("model_evaluation")[0].metadata
    gate = result.asset_materializations_for_node("champion_gate")[0].metadata
    k = next(key for key in ev if key.startswith("card_precision_at_"))
    decision = "PROMOTED" if gate["promoted"].value else "REJECTED (champion kept)"
    return "\n".join([
        f"\n[demo] model    {ev['model_tag'].value}: {model['n_trees'].value} trees, fit "
        f"{model['fit_s'].value}s (training stage {seconds:.0f}s)",
        f"[demo] test     {ev['test_window'].value}, {ev['test_transactions'].value:,} transactions, "
        f"{ev['test_frauds'].value} frauds (known-compromised cards removed)",
        f"[demo] metrics  AUC ROC {ev['auc_roc'].value:.3f}  AP {ev['average_precision'].value:.3f}  "
        f"CP@{k.rsplit('_', 1)[-1]} {ev[k].value:.3f}  "
        f"alerts: precision {ev['alert_precision'].value:.3f} recall {ev['alert_recall'].value:.3f}",
        f"[demo] gate     {decision}: {gate['reason'].value}",
        f"[demo] champion {gate['champion'].value}  (`fraud models list`, `fraud score --help`)",
        f"[demo] report   {ev['report_dir'].value}  (ROC, PR, daily CP@k, calibration PNGs; `make ui`)",
    ])


if __name__ == "__main__":
    main()
