"""The online model's opinion for a batch (one vectorised River call) equals its opinion row by row."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from bento.online_model import river_opinion, river_opinions
from ml.features.spec import FEATURE_NAMES
from ml.online.river_model import make_model


@pytest.mark.parametrize("name", ["logreg", "logreg_undersample", "hoeffding_adaptive_tree"])
@pytest.mark.parametrize("features", ["all", "some"])
def test_batch_opinions_equal_row_by_row(name: str, features: str) -> None:
    rng = np.random.default_rng(0)
    rows = rng.gamma(2.0, 20.0, size=(200, len(FEATURE_NAMES)))
    model = make_model(name)
    learn_names = FEATURE_NAMES if features == "all" else FEATURE_NAMES[:3]  # unseen columns stay unseen
    for row in rows[:150]:
        x = dict(zip(learn_names, row.tolist(), strict=False))
        model.learn(x, int(row[0] > 50), datetime(2018, 9, 1), 0.5)
    got = river_opinions(model, rows[150:], FEATURE_NAMES)
    expected = [river_opinion(model, dict(zip(FEATURE_NAMES, r, strict=True))) for r in rows[150:].tolist()]
    assert len(got) == 50 and all(isinstance(p, float) for p in got)
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    assert len(set(got)) > 1  # the model answers per row, not one constant


def test_untrained_and_missing_models() -> None:
    rows = np.ones((4, len(FEATURE_NAMES)))
    assert river_opinions(None, rows, FEATURE_NAMES) == [None] * 4
    model = make_model("logreg")
    expected = [river_opinion(model, dict(zip(FEATURE_NAMES, r, strict=True))) for r in rows.tolist()]
    assert river_opinions(model, rows, FEATURE_NAMES) == pytest.approx(expected, abs=1e-12)
