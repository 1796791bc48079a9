"""Streaming stage: a snapshot of the stream worker's River model (daily, and on its drift events).

The worker runs outside Dagster (``fraud worker``); Dagster observes it through the files it writes:
``<data_dir>/streaming/river/latest.pkl`` (checkpoint) and ``<data_dir>/streaming/drift_events.jsonl``.
"""

import shutil

import dagster as dg

from ml.settings import get_settings


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
