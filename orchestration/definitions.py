"""Dagster code location `fraud`: every asset, check, job, schedule, sensor and resource of the pipeline.

Load it after the dbt manifest exists (``orchestration.resources``: ``dagster dev`` prepares it itself).
"""

import dagster as dg

from orchestration import jobs, schedules, sensors
from orchestration.assets import features, ingest, monitoring, streaming, training
from orchestration.checks import feature_parity, training_set
from orchestration.resources import build_resources

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingest, features, training, monitoring, streaming]),
    asset_checks=dg.load_asset_checks_from_modules([training_set, feature_parity]),
    jobs=[jobs.training_job, jobs.drift_checks_job, jobs.river_snapshot_job],
    schedules=[schedules.daily_training_schedule, schedules.drift_checks_schedule, schedules.river_snapshot_schedule],
    sensors=[sensors.retrain_on_drift_sensor, sensors.drift_event_sensor],
    resources=build_resources(),
)
