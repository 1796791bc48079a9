"""Monitoring: Evidently drift checks fire on a drifted day and stay quiet on a stable one; the Dagster
assets carry the evidence in metadata; the sensor turns a failed check into a retraining run request."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

DAY = "2018-05-24"


def _drifted(df: pl.DataFrame) -> pl.DataFrame:
    """A drifted day: genuine amounts x1.5, more night activity, card-testing bursts, a fraud wave."""
    amounts = ("tx_amount", "customer_avg_amount_1d", "customer_avg_amount_7d", "customer_avg_amount_30d",
               "customer_max_amount_30d")  # the ratios of amounts are unchanged by a uniform shift
    rng = np.random.default_rng(0)
    night = pl.Series(rng.random(len(df)) < 0.2)
    burst = rng.random(len(df)) < 0.1
    extra = np.zeros(len(df), dtype=np.int64)
    extra[burst] = rng.integers(3, 12, int(burst.sum()))
    # A fraud wave at compromised terminals: what the champion has learnt to score high, so scores move.
    wave = pl.Series(rng.random(len(df)) < 0.1)
    burst_s = pl.Series(burst)
    return df.with_columns(
        *(pl.col(c) * 1.5 for c in amounts),
        pl.when(night).then(1.0).otherwise(pl.col("tx_during_night")).alias("tx_during_night"),
        pl.col("customer_nb_tx_1h") + pl.Series(extra),
        pl.col("customer_nb_tx_1d") + pl.when(burst_s).then(8).otherwise(0),
        pl.col("terminal_nb_tx_1h") + pl.when(burst_s).then(5).otherwise(0),
        *(pl.when(wave).then(pl.col(c).clip(lower_bound=0.5)).otherwise(pl.col(c)).alias(c)
          for c in ("terminal_risk_1d", "terminal_risk_7d", "terminal_risk_30d")),
    )


@pytest.fixture(scope="module")
def champ(warehouse: Path):
    """A small champion trained on the warehouse, promoted through the registry's gate."""
    from ml import registry
    from ml.monitoring.daily import champion_from_model
    from ml.training.train import XGBParams, fit, model_metadata
    from ml.training.training_set import SplitLengths, build

    with duckdb.connect(str(warehouse), read_only=True) as con:
        # Reference = its training window, 2018-05-01..05-15: past the first 30 days of the simulation, whose
        # 30-day windows are still filling (a real shift against any later day, not what is tested here).
        data = build(con, "2018-05-22", SplitLengths(train_days=7, valid_days=7))
    # Fixed hyperparameters (not the daily defaults), so the score-drift figures below don't move with tuning.
    res = fit(data, XGBParams(n_rounds=40, early_stopping_rounds=10, max_depth=6, min_child_weight=1.0,
                              scale_pos_weight=None))
    tag = registry.save_candidate(res.booster, model_metadata(data, res))
    registry.promote(tag, "monitoring test champion")
    return champion_from_model(registry.champion())


def test_thresholds_validate_and_read_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.monitoring.thresholds import DriftThresholds

    assert "tx_during_weekend" not in DriftThresholds().features
    monkeypatch.setenv("FRAUD_DRIFT_DRIFTED_SHARE", "0.4")
    assert DriftThresholds.from_env().drifted_share == 0.4
    with pytest.raises(ValueError, match="feature_method"):
        DriftThresholds(feature_method="ks")
    with pytest.raises(ValueError, match="unknown monitored"):
        DriftThresholds(features=("nope",))


def test_decision_combines_signals_with_evidence() -> None:
    from ml.monitoring.decisions import decide, quality_signal, score_drift_signal, stream_signal
    from ml.monitoring.thresholds import DriftThresholds

    t = DriftThresholds()
    quiet = decide(
        "d", [score_drift_signal(0.01, 1000, t), quality_signal(0.7, 0.72, 30, t), stream_signal([], t)]
    )
    assert not quiet.retrain and not quiet.reasons
    loud = decide(
        "d",
        [
            score_drift_signal(0.5, 1000, t),
            quality_signal(0.3, 0.72, 30, t),
            stream_signal([{"detector": "ADWIN", "stream": "river_error", "time": f"2018-05-01T0{h}:00:00"}
                           for h in range(3)], t),
        ],
    )
    assert loud.retrain and len(loud.reasons) == 3 and loud.label_free_flag
    assert "score_drift: FIRED" in loud.reasons[0]
    # Too little data: not evaluated, never an alarm.
    few = decide(
        "d", [score_drift_signal(0.9, 10, t), quality_signal(0.0, 0.72, 2, t), stream_signal(None, t)]
    )
    assert not few.retrain and all(not s.evaluated for s in few.signals)


def test_repeated_drift_events_count_once(tmp_path: Path) -> None:
    """The worker's outputs are at least once: a drift event written again after a crash (same id) must not
    count twice towards the retrain threshold; distinct events still do."""
    from datetime import datetime

    from ml.events import DriftEvent
    from ml.monitoring.daily import read_stream_events
    from ml.monitoring.decisions import decide, stream_signal
    from ml.monitoring.thresholds import DriftThresholds
    from ml.online.factory import make_store
    from ml.settings import get_settings
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    settings = get_settings().model_copy(update={"data_dir": tmp_path, "online_store": "memory"})
    w = Worker(ReplaySource(pd.DataFrame(columns=["transaction_id", "tx_datetime", "customer_id",
                                                   "terminal_id", "tx_amount"])),
               Sink(), make_store(settings), settings, restore=False)
    first = DriftEvent(time=datetime(2018, 5, 1, 10), detector="ADWIN", stream="river_error",
                       details={"labels_learned": 100})
    second = DriftEvent(time=datetime(2018, 5, 1, 11), detector="ADWIN", stream="river_error",
                        details={"labels_learned": 200})
    again = DriftEvent.model_validate_json(first.model_dump_json())  # as read back from the drift topic
    assert again.id == first.id != second.id
    for ev in (first, first, first, again):  # the worker replayed it after three crashes
        w._drift(ev)
    t = DriftThresholds(stream_events=2)
    events = read_stream_events(settings, "2018-05-01")
    assert events is not None and len(events) == 4
    sig = stream_signal(events, t)
    assert sig.value == 1 and not sig.fired and sig.detail["repeats_ignored"] == 3
    assert not decide("2018-05-01", [sig]).retrain
    w._drift(second)
    sig = stream_signal(read_stream_events(settings, "2018-05-01"), t)
    assert sig.value == 2 and sig.fired and decide("2018-05-01", [sig]).retrain


def test_checks_fire_on_drifted_day_and_stay_quiet_on_stable(warehouse: Path, champ, tmp_path: Path) -> None:
    from ml.monitoring import drift
    from ml.monitoring.daily import Reference, champion_scores, day_bounds
    from ml.monitoring.decisions import feature_drift_signal, score_drift_signal
    from ml.monitoring.thresholds import DriftThresholds

    t = DriftThresholds(reference_sample=3000)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        ref = Reference(con, champ, t)
        day = drift.load_features(con, *day_bounds(DAY), tuple(champ.feature_names))
    assert len(day) >= t.min_rows
    stable = drift.feature_drift_report(ref.frame, day, t, DAY)
    drifted_df = _drifted(day)
    drifted = drift.feature_drift_report(ref.frame, drifted_df, t, DAY)
    s_sig, d_sig = (
        feature_drift_signal(stable.scores, len(day), t),
        feature_drift_signal(drifted.scores, len(day), t),
    )
    assert not s_sig.fired, s_sig.detail
    assert d_sig.fired and {"tx_amount", "customer_nb_tx_1h"} <= set(d_sig.detail["drifted"])
    assert 0 <= stable.share < t.drifted_share <= drifted.share  # Evidently's own count agrees
    s_score = drift.score_drift_report(ref.scores, champion_scores(champ, day), t, DAY)
    d_score = drift.score_drift_report(ref.scores, champion_scores(champ, drifted_df), t, DAY)
    assert not score_drift_signal(s_score.score, len(day), t).fired
    assert score_drift_signal(d_score.score, len(day), t).fired
    assert d_score.score > s_score.score


def test_assets_write_reports_and_evidence_and_sensor_requests_retraining(
    warehouse: Path, champ, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from ml.monitoring.drift import workspace_path
    from ml.settings import get_settings
    from orchestration.assets import monitoring
    from orchestration.definitions import defs
    from orchestration.demo import instance
    from orchestration.sensors import retrain_on_drift_sensor

    inst = instance()
    assets = [monitoring.feature_drift_report, monitoring.prediction_drift_report]
    res = dg.materialize(
        assets,
        partition_key=DAY,
        instance=inst,
        resources=defs.resources,
        selection=[a.key for a in assets],
        raise_on_error=True,
    )
    assert res.success
    checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert checks[monitoring.FEATURE_CHECK].passed and checks[monitoring.SCORE_CHECK].passed
    meta = res.asset_materializations_for_node("feature_drift_report")[0].metadata
    assert Path(meta["html"].value).exists() and "top_features" in meta
    assert "evidence" in checks[monitoring.FEATURE_CHECK].metadata
    assert (workspace_path(get_settings())).exists()
    # Nothing failed yet: the sensor skips.
    ctx = dg.build_sensor_context(instance=inst)
    assert isinstance(retrain_on_drift_sensor(ctx), dg.SkipReason)

    # A threshold no day can meet: the feature check fails and the sensor asks for retraining.
    monkeypatch.setenv("FRAUD_DRIFT_DRIFTED_SHARE", "0.01")
    monkeypatch.setenv("FRAUD_DRIFT_FEATURE_THRESHOLD", "0.0001")
    res = dg.materialize(
        [monitoring.feature_drift_report],
        partition_key=DAY,
        instance=inst,
        resources=defs.resources,
        raise_on_error=True,
    )
    failed = [e for e in res.get_asset_check_evaluations() if e.check_name == monitoring.FEATURE_CHECK][0]
    assert not failed.passed and failed.metadata["evidence"].value["drifted"]
    requests = retrain_on_drift_sensor(dg.build_sensor_context(instance=inst, cursor=ctx.cursor))
    assert isinstance(requests, list) and len(requests) == 1
    req = requests[0]
    assert req.partition_key == "2018-05-25" and dg.AssetKey("xgb_model") in req.asset_selection
    assert req.tags["fraud/trigger_partition"] == DAY and "FIRED" in req.tags["fraud/evidence"]
