"""Small trained models for the registry and scoring tests (seconds on the small warehouse)."""

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
    from ml.training.training_set import TrainingData, WindowConfig, build

    with duckdb.connect(str(warehouse), read_only=True) as con:
        data = build(con, DAY, WindowConfig(train_days=14, valid_days=7, test_days=7))
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
