"""Streaming stage: a daily snapshot of the stream worker's River model, and a sensor on its drift events.

The worker runs outside Dagster (``fraud worker``); Dagster observes it through the files it writes:
``<data_dir>/streaming/river/latest.pkl`` (checkpoint) and ``<data_dir>/streaming/drift_events.jsonl``.
"""

import json
import shutil

import dagster as dg

from ml.settings import get_settings

SNAPSHOT_CRON = "0 1 * * *"


@dg.asset(
    key="river_snapshot",
    group_name="streaming",
    kinds={"river"},
    description="Daily copy of the stream worker's River checkpoint with its rolling metrics.",
)
def river_snapshot(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    import math
    import time

    from ml.online.checkpoint import HEAD, CheckpointRefused, read_head, river_dir

    directory = river_dir(get_settings())
    head = directory / HEAD
    try:
        ckpt = read_head(head)  # verified (signed by the worker) before it is unpickled
    except CheckpointRefused as e:
        # A planted or modified checkpoint: not run, not copied into the snapshots.
        raise dg.Failure(description=f"River checkpoint refused, no snapshot taken: {e}") from None
    if ckpt is None:
        context.log.warning(f"No River checkpoint at {head} yet: run `fraud worker` first")
        return dg.MaterializeResult(metadata={"status": "no checkpoint yet", "path": str(head)})
    model = ckpt["model"]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    snap_dir = directory.parent / "snapshots"
    snap_dir.mkdir(parents=True, exist_ok=True)
    target = snap_dir / f"river-{stamp}.pkl"
    shutil.copyfile(head, target)  # latest.pkl alone is enough to load the model (load_model)
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v)
               for k, v in model.rolling_metrics().items()}
    meta = {"snapshot": str(target), "model": model.name, "checkpoint_seq": ckpt["seq"],
            "offsets": dg.MetadataValue.json(ckpt["position"]),
            "last_label_time": str(model.last_label_time)}
    for k, v in metrics.items():
        if v is not None:
            meta[f"rolling_{k}"] = float(v) if isinstance(v, float) else int(v)
    return dg.MaterializeResult(metadata=meta)


river_snapshot_job = dg.define_asset_job("river_snapshot_job", selection=["river_snapshot"])

river_snapshot_schedule = dg.ScheduleDefinition(
    name="river_snapshot_daily", job=river_snapshot_job, cron_schedule=SNAPSHOT_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


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


defs = dg.Definitions(
    assets=[river_snapshot],
    jobs=[river_snapshot_job],
    schedules=[river_snapshot_schedule],
    sensors=[drift_event_sensor],
)
