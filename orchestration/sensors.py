"""Sensors: retrain when a drift check fails; snapshot the River model when the stream worker reports drift."""

import json

import dagster as dg

from ml.settings import get_settings
from orchestration.assets.monitoring import (
    FEATURE_CHECK,
    QUALITY_CHECK,
    SCORE_CHECK,
    STREAM_CHECK,
    classification_quality_report,
    feature_drift_report,
    prediction_drift_report,
)
from orchestration.assets.training import champion_gate, model_evaluation, training_set, xgb_model
from orchestration.jobs import river_snapshot_job
from orchestration.partitions import daily_partitions

MONITORED_CHECKS = [
    dg.AssetCheckKey(feature_drift_report.key, FEATURE_CHECK),
    dg.AssetCheckKey(feature_drift_report.key, STREAM_CHECK),
    dg.AssetCheckKey(prediction_drift_report.key, SCORE_CHECK),
    dg.AssetCheckKey(classification_quality_report.key, QUALITY_CHECK),
]
RETRAIN_ASSETS = [training_set.key, xgb_model.key, model_evaluation.key, champion_gate.key]


def _partition_of(instance: dg.DagsterInstance, record) -> str | None:  # noqa: ANN001 - check record
    """The partition a check evaluated: the record's, else its run's partition tag (a check emitted by a
    partitioned asset's run is stored without one)."""
    if record.partition:
        return record.partition
    run = instance.get_run_by_id(record.run_id)
    return run.tags.get("dagster/partition") if run is not None else None


def retrain_requests(
    instance: dg.DagsterInstance, cursor: int, partitions: list[str]
) -> tuple[list[dg.RunRequest], int]:
    """Run requests for failed monitored checks newer than ``cursor`` (an event-log id), and the new cursor.

    The retraining partition is the day after the failing one (its labels are known then), capped at the
    latest partition. The run's tags carry the evidence (check, partition, summary).
    """
    requests, newest = [], cursor
    for key in MONITORED_CHECKS:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is None or record.id <= cursor:
            continue
        newest = max(newest, record.id)
        evaluation = record.evaluation  # None while planned or when the check itself errored
        if evaluation is None or evaluation.passed:
            continue
        failed_day = _partition_of(instance, record) or partitions[-1]
        nxt = _next_key(failed_day, partitions)
        summary = str(evaluation.metadata["summary"].value) if "summary" in evaluation.metadata else key.name
        requests.append(
            dg.RunRequest(
                run_key=f"retrain-{nxt}",
                partition_key=nxt,
                asset_selection=RETRAIN_ASSETS,
                tags={
                    "fraud/trigger_check": key.to_user_string(),
                    "fraud/trigger_partition": failed_day,
                    "fraud/evidence": summary[:200],
                },
            )
        )
    return requests, newest


def _next_key(day: str, partitions: list[str]) -> str:
    later = [k for k in partitions if k > day]
    return later[0] if later else day


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    asset_selection=dg.AssetSelection.assets(*RETRAIN_ASSETS),
    description="Launches retraining (training stage, champion gate) when a drift check fails.",
)
def retrain_on_drift_sensor(context: dg.SensorEvaluationContext):
    cursor = int(context.cursor or 0)
    requests, newest = retrain_requests(context.instance, cursor, daily_partitions.get_partition_keys())
    context.update_cursor(str(newest))
    if not requests:
        return dg.SkipReason("no new failed drift check")
    for r in requests:
        context.log.info(f"retrain {r.partition_key}: {r.tags.get('fraud/evidence')}")
    return requests

@dg.sensor(job=river_snapshot_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def drift_event_sensor(context: dg.SensorEvaluationContext):
    """New lines in drift_events.jsonl -> snapshot the River model as it was at the drift (one run per batch).

    The cursor is the byte offset already read, so each event is acted on once.
    """
    path = get_settings().drift_events_path
    if not path.exists():
        return dg.SkipReason(f"no drift events yet ({path})")
    start = int(context.cursor or 0)
    size = path.stat().st_size
    if size < start:  # file replaced (fresh worker): read it again
        start = 0
    if size == start:
        return dg.SkipReason("no new drift events")
    with open(path, "rb") as f:
        f.seek(start)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next tick
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    context.update_cursor(str(start + len(complete)))
    if not events:
        return dg.SkipReason("no complete drift event line yet")
    streams = sorted({e["stream"] for e in events})
    context.log.info(f"{len(events)} drift event(s) on {streams}; last at {events[-1]['time']}")
    return dg.RunRequest(
        run_key=f"drift-{start}-{start + len(complete)}",
        tags={"fraud/drift_events": str(len(events)), "fraud/drift_streams": ",".join(streams),
              "fraud/drift_last_time": events[-1]["time"]},
    )

