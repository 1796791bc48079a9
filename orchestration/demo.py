"""`make demo`: materialize the pipeline end to end in the persistent Dagster instance, then summarise.

Runs are recorded in DAGSTER_HOME (data/dagster_home by default), so `make ui` shows them afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from ml.settings import get_settings
from orchestration.assets.training import SplitConfig

INSTANCE_CONFIG = Path(__file__).with_name("dagster.yaml")
# The book's protocol (Le Borgne et al. 2022): training data up to 2018-07-31, 7-day delay, test 08-08..14.
BOOK_DAY = "2018-08-08"


def instance() -> dg.DagsterInstance:
    """The persistent instance in DAGSTER_HOME (default ``<data_dir>/dagster_home``), configured by the
    project's ``dagster.yaml`` unless that home already has one."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(get_settings().data_dir / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    return dg.DagsterInstance.get()


def materialize(selection: str | Sequence[str] | dg.AssetSelection, partition_key: str | None = None,
                partition_range: tuple[str, str] | None = None) -> dg.ExecuteInProcessResult:
    """Materialize a selection of the code location's assets (with their checks) in one run; a partition
    range is one run too (the assets' single-run backfill policy)."""
    from orchestration.definitions import defs

    tags = None
    if partition_range:
        tags = {"dagster/asset_partition_range_start": partition_range[0],
                "dagster/asset_partition_range_end": partition_range[1]}
    return dg.materialize(
        [*defs.assets, *defs.asset_checks], selection=selection, instance=instance(), resources=defs.resources,
        partition_key=partition_key, tags=tags, raise_on_error=False,
        # Warnings and errors only on the console; the full event log is in the instance (`make ui`).
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )


def evaluable_days(windows: SplitConfig | None = None) -> tuple[str, str]:
    """First and last day D of the configured partitions whose training window starts inside the data and
    whose test window (and its labels' delay) ends inside it."""
    windows = windows or SplitConfig()
    s = get_settings()
    delay = timedelta(days=int(round(s.label_delay_days)))
    first = date.fromisoformat(s.start_date) + timedelta(days=windows.train_days + windows.valid_days) + delay
    last_day = date.fromisoformat(s.end_date) - timedelta(days=1)  # end_date is exclusive
    last = last_day - timedelta(days=windows.test_days - 1) - delay
    return first.isoformat(), last.isoformat()


def demo_partition(test_days: int = SplitConfig().test_days) -> str:
    """The day D that `make demo` trains and evaluates: the book's day when the data covers its windows (the
    default simulation), else the latest day whose whole pipeline, test labels included, fits in the data."""
    first, last = evaluable_days(SplitConfig(test_days=test_days))
    if last < first:
        s = get_settings()
        raise ValueError(f"the configured days ({s.start_date} .. {s.end_date}) are too few for a training "
                         "window, its validation, the label delay and a test week")
    return BOOK_DAY if first <= BOOK_DAY <= last else last


def _fail(step: str, result: dg.ExecuteInProcessResult) -> None:
    failures = [e.message for e in result.all_events if e.is_failure]
    raise SystemExit(f"[demo] {step} failed: {failures[-1] if failures else 'see `make ui`'}")


def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m orchestration.demo", description=__doc__.splitlines()[0]).parse_args(
        argv)
    from orchestration.partitions import daily_partitions
    from orchestration.resources import prepare_dbt_project

    settings = get_settings()
    prepare_dbt_project()  # the manifest the dbt assets are loaded from, current with the models
    keys = daily_partitions.get_partition_keys()
    t0 = time.perf_counter()
    print(f"[demo] ingest {keys[0]}..{keys[-1]} from {settings.source}", flush=True)
    ingest = materialize("raw_transactions", partition_range=(keys[0], keys[-1]))
    if not ingest.success:
        _fail("ingest", ingest)
    meta = ingest.asset_materializations_for_node("raw_transactions")[0].metadata
    t1 = time.perf_counter()
    print("[demo] dbt features", flush=True)
    # dagster-dbt echoes every dbt event to stdout; they are in the instance anyway: shown only on failure.
    with contextlib.redirect_stdout(io.StringIO()) as dbt_log:
        features = materialize("group:features")
    if not features.success:
        sys.stdout.write(dbt_log.getvalue()[-5000:])
        _fail("features", features)
    t2 = time.perf_counter()
    print(
        f"[demo] rows={meta['rows'].value:,} frauds={meta['frauds'].value:,} "
        f"quarantined={meta['quarantined'].value:,} ingest={t1 - t0:.1f}s features={t2 - t1:.1f}s", flush=True
    )
    day = demo_partition()
    print(f"[demo] training, evaluation and champion gate for D={day}", flush=True)
    training = materialize("group:training", partition_key=day)
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
