"""Score a model on a test window of the warehouse and compute the book's metrics (ml.training.metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import xgboost as xgb

from ml.training.metrics import EvalData, Metrics, evaluate
from ml.training.train import predict
from ml.training.training_set import FeatureSource, Frame, known_frauds, load_frame


@dataclass
class TestWindow:
    frame: Frame
    known_card: np.ndarray
    known_label_time: np.ndarray

    def eval_data(self, scores: np.ndarray) -> EvalData:
        f = self.frame
        return EvalData(f.day, f.customer_id, f.y, scores, self.known_card, self.known_label_time)


def load_test_window(source: FeatureSource, start: datetime, end: datetime,
                     feature_names: list[str] | tuple[str, ...]) -> TestWindow:
    frame = load_frame(source, start, end, feature_names=feature_names)
    if len(frame) == 0:
        raise ValueError(f"no labelled transactions in the test window [{start}, {end}): "
                         "its days are not loaded yet or their labels are not known")
    return TestWindow(frame, *known_frauds(source, start, end))


def score_window(booster: xgb.Booster, window: TestWindow, feature_names: list[str] | tuple[str, ...]
                 ) -> np.ndarray:
    if tuple(feature_names) != window.frame.feature_names:
        raise ValueError("feature order of the model and of the loaded window differ")
    return predict(booster, window.frame.X, feature_names)


def evaluate_booster(booster: xgb.Booster, window: TestWindow, feature_names: list[str] | tuple[str, ...],
                     threshold: float | None = None, k: int = 100) -> tuple[Metrics, np.ndarray]:
    scores = score_window(booster, window, feature_names)
    return evaluate(window.eval_data(scores), k=k, threshold=threshold), scores
