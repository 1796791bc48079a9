"""Small models for the tests: trained on the small warehouse (registry, scoring) or a stand-in champion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import duckdb
import numpy as np

DAY = "2018-05-10"


def train_pair(warehouse: Path) -> dict:
    """A reasonable model and a worse one (shuffled labels, one tree), saved as candidates and evaluated
    on the same test window."""
    from ml import registry
    from ml.training.evaluate import evaluate_booster, load_test_window
    from ml.training.train import XGBParams, fit, model_metadata
    from ml.training.training_set import SplitLengths, TrainingData, build

    with duckdb.connect(str(warehouse), read_only=True) as con:
        data = build(con, DAY, SplitLengths(train_days=14, valid_days=7, test_days=7))
        window = load_test_window(con, *data.windows.test, data.train.feature_names)
    good = fit(data, XGBParams(n_rounds=40, early_stopping_rounds=10))
    shuffled = dataclasses.replace(data.train, y=np.random.default_rng(0).permutation(data.train.y))
    bad_data = TrainingData(data.windows, shuffled, data.valid)
    bad = fit(bad_data, XGBParams(n_rounds=1, early_stopping_rounds=0, refit_on_valid=False))
    out = {"window": window, "names": data.train.feature_names}
    for name, res, d in (("good", good, data), ("bad", bad, bad_data)):
        tag = registry.save_candidate(res.booster, model_metadata(d, res))
        metrics, scores = evaluate_booster(res.booster, window, data.train.feature_names, res.threshold)
        out[name] = {"tag": tag, "metrics": metrics.summary(), "scores": scores}
    return out


def save_standin_champion(n_trees: int = 100, depth: int = 6, seed: int = 0, threshold: float = 0.5) -> str:
    """A small booster on synthetic data, saved as the champion (tests and benchmarks on a model store that
    has no trained champion yet)."""
    import bentoml
    import xgboost as xgb

    from ml.champion import CHAMPION_NAME
    from ml.features.spec import FEATURE_NAMES, SPEC_VERSION
    from ml.settings import export_tool_env

    export_tool_env()
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 20.0, size=(4000, len(FEATURE_NAMES)))
    y = (x[:, 0] + rng.normal(0, 20, len(x)) > 80).astype(int)
    booster = xgb.train({"max_depth": depth, "objective": "binary:logistic", "nthread": 1},
                        xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES)), num_boost_round=n_trees)
    model = bentoml.xgboost.save_model(
        CHAMPION_NAME, booster,
        labels={"role": "champion", "stand_in": "true"},
        metadata={"feature_names": list(FEATURE_NAMES), "spec_version": SPEC_VERSION,
                  "threshold": threshold, "source_tag": "stand-in"},
    )
    return str(model.tag)
