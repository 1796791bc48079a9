"""Schedules. Each day T asks only for the partitions whose inputs are complete on T (labels arrive late)."""

from datetime import timedelta

import dagster as dg

from ml.settings import get_settings
from orchestration.assets.monitoring import (
    classification_quality_report,
    feature_drift_report,
    prediction_drift_report,
)
from orchestration.assets.training import SplitConfig, champion_gate, model_evaluation, training_set, xgb_model
from orchestration.jobs import drift_checks_job, river_snapshot_job, training_job
from orchestration.partitions import daily_partitions

TRAIN_STEPS = [training_set.key, xgb_model.key]
EVALUATE_STEPS = [model_evaluation.key, champion_gate.key]
DRIFT_STEPS = [feature_drift_report.key, prediction_drift_report.key]
QUALITY_STEPS = [classification_quality_report.key]


def _requests(context: dg.ScheduleEvaluationContext, plan: tuple[tuple[str, list[dg.AssetKey], int], ...]
              ) -> list[dg.RunRequest]:
    """A run per (name, assets, days before today) whose day is a partition, keyed so it runs once."""
    now = context.scheduled_execution_time
    keys = set(daily_partitions.get_partition_keys(current_time=now))
    days = [(name, steps, (now.date() - timedelta(days=lag)).isoformat()) for name, steps, lag in plan]
    return [dg.RunRequest(run_key=f"{name}-{day}", partition_key=day, asset_selection=steps)
            for name, steps, day in days if day in keys]


def _delay_days() -> int:
    return int(round(get_settings().label_delay_days))


@dg.schedule(cron_schedule="0 3 * * *", job=training_job, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def daily_training_schedule(context: dg.ScheduleEvaluationContext):
    """Day T: train D = T; evaluate and gate D = T - test_days - delay (its test labels are known now)."""
    lag = SplitConfig().test_days + _delay_days()
    requests = _requests(context, (("train", TRAIN_STEPS, 0), ("evaluate", EVALUATE_STEPS, lag)))
    return requests or dg.SkipReason(
        f"{context.scheduled_execution_time.date()} and its evaluation day are outside the partitions")


@dg.schedule(cron_schedule="0 2 * * *", job=drift_checks_job, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def drift_checks_schedule(context: dg.ScheduleEvaluationContext):
    """Day T: drift reports of yesterday (complete day), quality of yesterday - delay (labels known now)."""
    requests = _requests(context, (("drift", DRIFT_STEPS, 1), ("quality", QUALITY_STEPS, 1 + _delay_days())))
    return requests or dg.SkipReason(f"no partition for {context.scheduled_execution_time.date()}")


river_snapshot_schedule = dg.ScheduleDefinition(
    name="river_snapshot_daily", job=river_snapshot_job, cron_schedule="0 1 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
