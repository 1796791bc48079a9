"""Monitoring stage: Evidently drift reports per day and the checks on them that decide retraining.

- ``feature_drift_report[D]``: the day's features vs. the champion's training window (checks
  ``feature_drift_share`` and ``stream_drift_events``).
- ``prediction_drift_report[D]``: the champion's score distribution on D vs. its reference (``score_drift``).
- ``classification_quality_report[D]``: quality on D once its labels are known (``average_precision_drop``);
  the schedule runs it for D = today - delay.
The schedule (``drift_checks_schedule``) and the sensor that retrains when a check fails
(``retrain_on_drift_sensor``) are in ``orchestration/schedules.py`` and ``orchestration/sensors.py``.
Thresholds and their reasoning: ``ml/monitoring/thresholds.py``. HTML under reports/drift/<day>/, Evidently
workspace at data/evidently (``evidently ui --workspace data/evidently``).
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from ml.data.warehouse import features_connection
from ml.settings import get_settings
from orchestration.assets import FEATURES_TABLE_KEY
from orchestration.partitions import daily_partitions

GROUP = "monitoring"
FEATURE_CHECK, STREAM_CHECK = "feature_drift_share", "stream_drift_events"
SCORE_CHECK, QUALITY_CHECK = "score_drift", "average_precision_drop"


def _check_result(signal, asset_key: str, check_name: str) -> dg.AssetCheckResult:  # noqa: ANN001 - Signal
    """A Signal as a check result: failed = retrain; not evaluated = passed with a WARN-free note."""
    from ml.monitoring.drift import to_jsonable

    meta = {
        "value": signal.value if signal.value is not None else -1.0,
        "threshold": signal.threshold,
        "evaluated": signal.evaluated,
        "summary": signal.summary(),
        "evidence": dg.MetadataValue.json(to_jsonable(signal.detail)),
    }
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=not signal.fired,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=meta,
    )


def _champion_and_reference(con, t):  # noqa: ANN001, ANN202
    from ml.monitoring.daily import Reference, current_champion

    try:
        champ = current_champion()
    except LookupError as e:
        raise dg.Failure(str(e)) from None
    return champ, Reference(con, champ, t)


def _md_top(scores: dict[str, float], threshold: float, n: int = 8) -> str:
    rows = [f"| {k} | {v:.3f} | {'drift' if v >= threshold else ''} |" for k, v in list(scores.items())[:n]]
    return "| feature | score | |\n|---|---|---|\n" + "\n".join(rows)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[FEATURES_TABLE_KEY],
    kinds={"evidently"},
    check_specs=[
        dg.AssetCheckSpec(
            FEATURE_CHECK,
            asset="feature_drift_report",
            description="Share of drifted features >= drifted_share -> retrain.",
        ),
        dg.AssetCheckSpec(
            STREAM_CHECK,
            asset="feature_drift_report",
            description="River/ADWIN drift events of the day >= stream_events -> retrain.",
        ),
    ],
    description="Evidently data drift of the day's features vs. the champion's training window.",
)
def feature_drift_report(context: dg.AssetExecutionContext, duckdb: DuckDBResource):
    from ml.monitoring.daily import drift_day, read_stream_events
    from ml.monitoring.thresholds import DriftThresholds

    settings, t, day = get_settings(), DriftThresholds.from_env(), context.partition_key
    with features_connection(duckdb.database) as con:
        champ, ref = _champion_and_reference(con, t)
        rep = drift_day(con, champ, ref, day, t, settings, read_stream_events(settings, day))
    fsig, _, ssig = rep.signals
    meta = {
        "champion": champ.tag,
        "reference_window": f"[{champ.train_start}, {champ.train_end})",
        "rows": fsig.detail.get("rows", 0),
        "drifted_share": fsig.value if fsig.value is not None else -1.0,
        "drifted_features": dg.MetadataValue.json(fsig.detail.get("drifted", [])),
    }
    if rep.feature is not None:
        meta["top_features"] = dg.MetadataValue.md(_md_top(fsig.detail["scores"], t.feature_threshold))
        meta["html"] = dg.MetadataValue.path(rep.paths["feature_drift"])
    yield dg.MaterializeResult(
        metadata=meta,
        check_results=[
            _check_result(fsig, "feature_drift_report", FEATURE_CHECK),
            _check_result(ssig, "feature_drift_report", STREAM_CHECK),
        ],
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[FEATURES_TABLE_KEY],
    kinds={"evidently"},
    check_specs=[
        dg.AssetCheckSpec(
            SCORE_CHECK,
            asset="prediction_drift_report",
            description="Drift of the champion's score distribution >= score_threshold.",
        )
    ],
    description="Evidently drift of the champion's scores on the day vs. on its training window.",
)
def prediction_drift_report(context: dg.AssetExecutionContext, duckdb: DuckDBResource):
    from ml.monitoring.daily import champion_scores, day_bounds
    from ml.monitoring.decisions import score_drift_signal
    from ml.monitoring.drift import load_features, log_run, save_report, score_drift_report
    from ml.monitoring.thresholds import DriftThresholds

    settings, t, day = get_settings(), DriftThresholds.from_env(), context.partition_key
    with features_connection(duckdb.database) as con:
        champ, ref = _champion_and_reference(con, t)
        cur = load_features(con, *day_bounds(day), champ.feature_names)
    scores = champion_scores(champ, cur) if len(cur) else None
    sd = score_drift_report(ref.scores, scores, t, day) if len(cur) >= t.min_rows else None
    sig = score_drift_signal(sd.score if sd else None, len(cur), t)
    meta = {
        "champion": champ.tag,
        "rows": len(cur),
        "score_drift": sig.value if sig.value is not None else -1.0,
    }
    if sd is not None:
        meta.update(
            reference_mean_score=sd.reference_mean,
            current_mean_score=sd.current_mean,
            html=dg.MetadataValue.path(str(save_report(sd.snapshot, settings, "prediction_drift", day))),
        )
        log_run(sd.snapshot, settings, "prediction_drift")
    yield dg.MaterializeResult(
        metadata=meta, check_results=[_check_result(sig, "prediction_drift_report", SCORE_CHECK)]
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[FEATURES_TABLE_KEY],
    kinds={"evidently"},
    check_specs=[
        dg.AssetCheckSpec(
            QUALITY_CHECK,
            asset="classification_quality_report",
            description="Day's AP below the champion's evaluation - ap_tolerance.",
        )
    ],
    description="Evidently classification quality of the champion on the day, once its labels are known.",
)
def classification_quality_report(context: dg.AssetExecutionContext, duckdb: DuckDBResource):
    from ml.monitoring.daily import current_champion, quality_day
    from ml.monitoring.thresholds import DriftThresholds

    settings, t, day = get_settings(), DriftThresholds.from_env(), context.partition_key
    try:
        champ = current_champion()
    except LookupError as e:
        raise dg.Failure(str(e)) from None
    with features_connection(duckdb.database) as con:
        q, sig, path = quality_day(con, champ, day, t, settings=settings)
    if q is None:
        raise dg.Failure(
            f"no labelled transactions on {day} yet: run this partition once its labels are known "
            f"(label delay {settings.label_delay_days:g} days)"
        )
    meta = {
        "champion": champ.tag,
        "rows": q.rows,
        "frauds": q.frauds,
        "average_precision": q.average_precision if q.frauds else -1.0,
        "champion_average_precision": champ.average_precision or -1.0,
        "evidently_metrics": dg.MetadataValue.json(q.metrics),
        "html": dg.MetadataValue.path(path),
    }
    yield dg.MaterializeResult(
        metadata=meta, check_results=[_check_result(sig, "classification_quality_report", QUALITY_CHECK)]
    )
