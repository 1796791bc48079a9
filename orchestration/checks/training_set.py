"""Point-in-time check of a training set: no leakage of labels unknown at the training day D."""

import json
import warnings

import dagster as dg

from orchestration.assets.training import split_lengths_of, training_set_dir
from orchestration.partitions import daily_partitions


def _point_in_time(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    import numpy as np

    from ml.training.training_set import read_parquet

    day = context.partition_key
    manifest = json.loads((training_set_dir(day) / "manifest.json").read_text())
    data = read_parquet(training_set_dir(day) / "rows.parquet", day, split_lengths_of(manifest))
    w = data.windows
    known = np.datetime64(w.day, "us")
    late = int((data.train.label_time > known).sum() + (data.valid.label_time > known).sum())
    ordered = w.train[1] <= w.valid[0] and w.valid[1] <= w.day <= w.test[0]
    return dg.AssetCheckResult(passed=late == 0 and ordered,
                               metadata={"rows_with_label_after_D": late, "windows_ordered": ordered})


with warnings.catch_warnings():
    # A partitioned check (it reads the rows of D) is a Dagster "preview" feature: keep its warning quiet.
    warnings.simplefilter("ignore", dg.PreviewWarning)
    training_set_point_in_time = dg.asset_check(
        asset="training_set", name="training_set_point_in_time", blocking=True, partitions_def=daily_partitions,
        description="No row's label is unknown at D, and train/valid/test windows do not overlap.",
    )(_point_in_time)
