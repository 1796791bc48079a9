"""The numpy tree walk gives XGBoost's approximate contributions and probabilities: missing values (default
directions), values exactly on a threshold, another base score, shallow and deep trees."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from bento.explanations import PathContributions


@pytest.mark.parametrize("params", [
    {"max_depth": 6},
    {"max_depth": 3, "min_child_weight": 5, "base_score": 0.3},
    {"max_depth": 8, "eta": 0.3},
])
def test_same_as_xgboost(params: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 20.0, size=(3000, 6))
    y = (x[:, 0] + rng.normal(0, 20, len(x)) > 80).astype(int)
    x[rng.random(x.shape) < 0.05] = np.nan
    booster = xgb.train({**params, "objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, label=y), 40)
    paths = PathContributions.from_booster(booster)
    assert paths is not None
    test = rng.gamma(2.0, 20.0, size=(200, 6))
    test[rng.random(test.shape) < 0.1] = np.nan
    tree = booster.trees_to_dataframe()
    test[:20, 0] = tree.loc[tree.Feature == "f0", "Split"].to_numpy()[:1]  # exactly on a threshold
    dm = xgb.DMatrix(test)
    want = booster.predict(dm, pred_contribs=True, approx_contribs=True)
    assert np.allclose(paths.contributions(test), want, rtol=0, atol=1e-5)  # XGBoost adds in float32
    proba, contribs = paths.predict_explain(test)
    assert np.allclose(proba, booster.predict(dm), rtol=0, atol=1e-6)
    assert contribs.shape == (200, 6)


def test_other_objectives_are_left_to_xgboost() -> None:
    x = np.random.default_rng(1).normal(size=(200, 3))
    booster = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, label=x[:, 0]), 5)
    assert PathContributions.from_booster(booster) is None
