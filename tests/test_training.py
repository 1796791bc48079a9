"""Training stage: point-in-time windows, the book's metrics on hand-computed examples, the Dagster assets."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from ml.training.metrics import EvalData, alert_metrics, calibration_bins, card_precision_top_k, evaluate

DAY = "2018-05-10"


def _cfg():
    from ml.training.training_set import SplitLengths

    return SplitLengths(train_days=14, valid_days=7, test_days=7)


def test_windows_end_a_label_delay_before_the_day() -> None:
    """Fixed timestamp split: train < valid < D - delay <= D = test start."""
    from ml.training.training_set import SplitLengths, windows_for

    w = windows_for(DAY, _cfg())
    assert w.train == (datetime(2018, 4, 12), datetime(2018, 4, 26)) and w.valid[0] == w.train[1]
    assert w.valid[1] == datetime(2018, 5, 3) == w.day - timedelta(days=w.delay_days)
    assert w.test == (datetime(2018, 5, 10), datetime(2018, 5, 17))
    with pytest.raises(ValueError, match=">= 1 day"):
        windows_for(DAY, SplitLengths(train_days=14, valid_days=0, test_days=7))


def test_training_rows_respect_label_delay_and_windows(warehouse: Path) -> None:
    from ml.training.training_set import build

    with duckdb.connect(str(warehouse), read_only=True) as con:
        data = build(con, DAY, _cfg())
    w, d = data.windows, np.datetime64(datetime(2018, 5, 10), "us")
    assert len(data.train) > 1000 and data.train.y.sum() > 0 and data.valid.y.sum() > 0
    # No training or validation row whose label is unknown at D.
    assert data.train.label_time.max() <= d and data.valid.label_time.max() <= d
    # Fixed timestamp split: train < valid < D - delay <= D = test start; no shared row.
    assert data.train.tx_datetime.max() < np.datetime64(w.valid[0], "us") <= data.valid.tx_datetime.min()
    assert data.valid.tx_datetime.max() < np.datetime64(w.valid[1], "us")
    assert not set(data.train.transaction_id) & set(data.valid.transaction_id)


def test_fit_is_reproducible(warehouse: Path) -> None:
    from ml.training.train import XGBParams, fit, model_metadata
    from ml.training.training_set import build

    with duckdb.connect(str(warehouse), read_only=True) as con:
        a, b = build(con, DAY, _cfg()), build(con, DAY, _cfg())
    params = XGBParams(n_rounds=15, early_stopping_rounds=5)
    ra, rb = fit(a, params), fit(b, params)
    assert a.fingerprint() == b.fingerprint()
    np.testing.assert_array_equal(ra.valid_scores, rb.valid_scores)
    meta = model_metadata(a, ra)
    assert meta["data_fingerprint"] == a.fingerprint() and meta["params"]["seed"] == 0
    assert meta["feature_names"] == list(a.train.feature_names) and meta["spec_version"]
    assert 0.0 < meta["threshold"] < 1.0 and meta["metrics"]["valid_average_precision"] > 0.3


def test_snapshot_scan_and_warehouse_give_the_same_rows(warehouse: Path) -> None:
    """The lazy polars scan of the features snapshot (pruned to the windows' days) and the warehouse read
    through Arrow give the same rows in the same order, hence the same training data and test window."""
    import polars as pl

    from ml.data.warehouse import features_source, has_snapshot
    from ml.training.evaluate import load_test_window
    from ml.training.training_set import build

    assert has_snapshot(warehouse)
    with features_source(warehouse) as scan, duckdb.connect(str(warehouse), read_only=True) as con:
        assert isinstance(scan, pl.LazyFrame)
        a, b = build(scan, DAY, _cfg()), build(con, DAY, _cfg())
        wa = load_test_window(scan, *a.windows.test, a.train.feature_names)
        wb = load_test_window(con, *b.windows.test, b.train.feature_names)
    assert a.fingerprint() == b.fingerprint() and len(a.train) > 1000
    np.testing.assert_array_equal(a.train.label_time, b.train.label_time)
    np.testing.assert_array_equal(a.valid.tx_datetime, b.valid.tx_datetime)
    assert wa.frame.transaction_id.tolist() == wb.frame.transaction_id.tolist()
    known = [sorted(zip(w.known_card, w.known_label_time, strict=True)) for w in (wa, wb)]
    assert known[0] == known[1] and known[0]


def test_card_precision_at_k_hand_computed() -> None:
    day = np.array(["2018-01-01"] * 5 + ["2018-01-02"] * 3, dtype="datetime64[D]")
    card = np.array(["a", "a", "b", "c", "d", "a", "b", "e"])
    y = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    score = np.array([0.9, 0.2, 0.8, 0.3, 0.1, 0.99, 0.5, 0.4])
    # Day 1 cards by max score: a (0.9, fraud), b (0.8), c (0.3, fraud), d -> top 2 = a, b -> 1/2.
    # Day 2: a was detected on day 1, so it is removed; b (0.5), e (0.4) -> 0 frauds -> 0/2.
    res = card_precision_top_k(day, card, y, score, k=2)
    assert res.precision == [0.5, 0.0] and res.mean == 0.25 and res.compromised_cards == [2, 0]
    # Without removal, day 2 has a (fraud) on top: 1/2.
    assert card_precision_top_k(day, card, y, score, k=2, remove_detected=False).precision == [0.5, 0.5]


def test_known_compromised_cards_are_removed() -> None:
    day = np.array(["2018-01-10"] * 3 + ["2018-01-11"] * 2, dtype="datetime64[D]")
    card = np.array(["a", "b", "c", "a", "c"])
    y = np.array([1, 0, 1, 1, 0])
    score = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    # Card a had a fraud labelled on Jan 9 (known on both days); card c's fraud of Jan 10 is labelled during
    # Jan 11 at 12:00, i.e. not known at the start of Jan 11: c stays in.
    known_card = np.array(["a", "c"])
    known_at = np.array(["2018-01-09T08:00", "2018-01-11T12:00"], dtype="datetime64[us]")
    m = evaluate(EvalData(day, card, y, score, known_card, known_at), k=1)
    assert m.removed_known_compromised == 2  # both rows of card a
    assert m.n_transactions == 3 and m.n_frauds == 1
    assert m.daily.precision == [1.0, 0.0]  # day 1: c (0.8, fraud) tops b; day 2: c was detected -> removed
    assert m.auc_roc == 1.0 and m.average_precision == 1.0


def test_alert_budget_and_calibration() -> None:
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.2, 0.05])
    a = alert_metrics(y, s, threshold=0.5)
    assert a["alerts"] == 2 and a["precision"] == 0.5 and a["recall"] == 0.5
    bins = calibration_bins(y, s, n_bins=2)
    assert [b["n"] for b in bins] == [3, 2] and bins[1]["fraud_rate"] == 0.5
    assert bins[0]["fraud_rate"] == pytest.approx(1 / 3)


def _standin_champion() -> str:
    """A champion saved straight into the store with only what the service needs (as a serving test or a
    user may do): no training window, threshold or metrics. The gate must still work over it."""
    import bentoml
    import xgboost as xgb

    from ml import registry
    from ml.features.spec import FEATURE_NAMES
    from ml.settings import export_tool_env

    rng = np.random.default_rng(1)
    X = rng.random((500, len(FEATURE_NAMES)))
    booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(X, label=rng.integers(0, 2, 500),
                        feature_names=list(FEATURE_NAMES)), num_boost_round=3)
    export_tool_env()
    meta = {"feature_names": list(FEATURE_NAMES), "source_tag": "stand-in"}
    model = bentoml.xgboost.save_model(registry.CHAMPION_NAME, booster, metadata=meta)
    return str(model.tag)


def test_training_assets_end_to_end(warehouse: Path) -> None:
    """training_set -> xgb_model -> model_evaluation -> champion_gate for one day, through Dagster, over a
    champion that has no registry metadata (whatever other tests left in the shared store)."""
    from ml import registry
    from ml.settings import get_settings
    from orchestration.demo import materialize

    standin = _standin_champion()
    result = materialize("group:training", partition_key=DAY)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    trained = result.asset_materializations_for_node("xgb_model")[0].metadata
    ev = result.asset_materializations_for_node("model_evaluation")[0].metadata
    assert ev["model_tag"].value == trained["tag"].value  # the model this run trained, not another of D
    assert 0.5 < ev["auc_roc"].value <= 1.0 and ev["card_precision_at_100"].value >= 0.0
    assert ev["alerts"].value > 0 and 0.0 <= ev["alert_recall"].value <= 1.0
    assert "data:image/png;base64," in ev["plots"].value and "fraud rate" in ev["calibration"].value
    reports = get_settings().reports_dir / "training" / DAY
    for name in ("roc.png", "pr.png", "card_precision_daily.png", "calibration.png", "metrics.json"):
        assert (reports / name).stat().st_size > 0
    gate = result.asset_materializations_for_node("champion_gate")[0].metadata
    decision = registry.last_decisions(1)[-1]
    assert decision["challenger_tag"] == gate["challenger"].value == trained["tag"].value
    # The stand-in was scored on the same window and lost: the trained model is the champion now.
    assert gate["previous_champion"].value == standin and decision["champion_tag"] == standin
    ap = "average_precision"
    assert decision["champion_metrics"][ap] < decision["challenger_metrics"][ap]
    assert gate["promoted"].value is True and decision["promoted"] is True
    assert registry.champion().info.metadata["source_tag"] == trained["tag"].value
    assert "PROMOTED" in gate["comparison"].value
    recorded = json.loads((reports / "metrics.json").read_text())
    assert recorded["model_tag"] == gate["challenger"].value

    # Re-running the day's gate changes nothing: no second champion version of the same model.
    n_versions = len(registry.champion_history())
    again = materialize("champion_gate", partition_key=DAY)
    assert again.success and len(registry.champion_history()) == n_versions
    assert "already is the champion" in registry.last_decisions(1)[-1]["reason"]
