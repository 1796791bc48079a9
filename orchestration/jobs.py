"""Jobs: one per stage that runs on a schedule or a sensor (the demo and the UI materialize any selection)."""

import dagster as dg

from orchestration.partitions import daily_partitions

training_job = dg.define_asset_job(
    "daily_training", selection=dg.AssetSelection.groups("training"), partitions_def=daily_partitions
)
drift_checks_job = dg.define_asset_job(
    "drift_checks", selection=dg.AssetSelection.groups("monitoring"), partitions_def=daily_partitions
)
river_snapshot_job = dg.define_asset_job("river_snapshot_job", selection=["river_snapshot"])
