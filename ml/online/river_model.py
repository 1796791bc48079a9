"""The online model: a River classifier learning from delayed labels, plus drift detectors on its errors.

``OnlineModel`` wraps the classifier with what the worker and the service need: ``predict`` (probability of
fraud for a feature dict), ``learn`` (one joined label; returns drift events), rolling metrics over the last
labels, and detector state. Everything is picklable: the worker checkpoints it, the service loads it.

Candidates are compared by ``benchmarks/bench_adaptation.py`` (``benchmarks.adaptation``): average precision
on the worker's delayed-label stream, recovery after an injected drift, and the cost of a predict + learn.
``DEFAULT_MODEL`` is the pick (docs/adr/0013-river-model-choice.md).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from river import drift, forest, imblearn, linear_model, optim, preprocessing, tree

from ml.events import DriftEvent

# SGD step: of 0.005 / 0.01 / 0.02 / 0.05, 0.01 gave the best AP once the new pattern's labels are known
# among those that recover within a day (the sweep in benchmarks/results/adaptation.json).
LEARNING_RATE = 0.01


def _logreg() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(LEARNING_RATE))


def _logreg_undersample() -> Any:
    return preprocessing.StandardScaler() | imblearn.RandomUnderSampler(
        linear_model.LogisticRegression(optimizer=optim.SGD(LEARNING_RATE)), desired_dist={0: 0.8, 1: 0.2},
        seed=0)


def logreg_with(learning_rate: float) -> Callable[[], Any]:
    """The default pipeline with another SGD step (the benchmark's learning-rate sweep)."""
    return lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(learning_rate))


def _hat() -> Any:
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=200, seed=0)


def _arf() -> Any:
    return forest.ARFClassifier(n_models=5, seed=0)


def _arf_oversample() -> Any:
    # ARF draws its own Poisson weights (it ignores ``w``): rebalance by sampling instead.
    return imblearn.RandomOverSampler(forest.ARFClassifier(n_models=5, seed=0), desired_dist={0: 0.8, 1: 0.2},
                                      seed=0)


# name -> (factory, weight of a fraud label in learn_one; class weighting for imbalance)
CANDIDATES: dict[str, tuple[Callable[[], Any], float]] = {
    "logreg": (_logreg, 1.0),
    "logreg_weighted": (_logreg, 10.0),
    "logreg_undersample": (_logreg_undersample, 1.0),
    "hoeffding_adaptive_tree": (_hat, 1.0),
    "hoeffding_adaptive_tree_weighted": (_hat, 10.0),
    "arf": (_arf, 1.0),
    "arf_oversample": (_arf_oversample, 1.0),
}
# Recovered fastest on the adaptation benchmark at a fraction of the trees' cost (docs/adr/0013).
DEFAULT_MODEL = "logreg"

ROLLING_WINDOW = 5000  # labels kept for rolling metrics


def average_precision(y: list[int], p: list[float]) -> float:
    """AP without sklearn (the service imports this module): mean precision at each positive, ties grouped."""
    n_pos = sum(y)
    if n_pos == 0:
        return float("nan")
    pairs = sorted(zip(p, y, strict=True), key=lambda t: -t[0])
    tp = fp = 0
    ap = 0.0
    i = 0
    while i < len(pairs):
        j = i
        dtp = 0
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            dtp += pairs[j][1]
            j += 1
        fp += (j - i) - dtp
        tp += dtp
        if dtp:
            ap += dtp / n_pos * tp / (tp + fp)
        i = j
    return ap


class OnlineModel:
    """River classifier + ADWIN detectors on |y - p| of River and (when present) of the frozen champion."""

    def __init__(self, name: str = DEFAULT_MODEL, adwin_delta: float = 1e-4,
                 spec: tuple[Callable[[], Any], float] | None = None):
        """``spec`` (factory, fraud weight) builds a model that is not a registered candidate (sweeps)."""
        factory, self.pos_weight = spec or CANDIDATES[name]
        self.name = name
        self.model = factory()
        self.n_learned = 0
        self.n_frauds = 0
        self.detectors: dict[str, drift.ADWIN] = {
            "river_error": drift.ADWIN(delta=adwin_delta),
            "xgb_error": drift.ADWIN(delta=adwin_delta),
        }
        self.drifts = 0
        # (y, river p, xgb p or nan) of the last labels, for rolling metrics and snapshots.
        self.recent: deque[tuple[int, float, float]] = deque(maxlen=ROLLING_WINDOW)
        self.last_label_time: datetime | None = None

    def predict(self, x: dict[str, float]) -> float:
        p = self.model.predict_proba_one(x)
        return float(p.get(True, p.get(1, 0.0))) if p else 0.0

    def learn(self, x: dict[str, float], y: int, time: datetime, p_river: float,
              p_xgb: float | None = None) -> list[DriftEvent]:
        """Learn one joined label. ``p_river``/``p_xgb`` are the scores given at transaction time."""
        self.model.learn_one(x, bool(y), **({"w": self.pos_weight} if y and self.pos_weight != 1.0 else {}))
        self.n_learned += 1
        self.n_frauds += int(y)
        self.last_label_time = time
        self.recent.append((int(y), p_river, math.nan if p_xgb is None else p_xgb))
        events = []
        for stream, p in (("river_error", p_river), ("xgb_error", p_xgb)):
            if p is None:
                continue
            det = self.detectors[stream]
            det.update(abs(y - p))
            if det.drift_detected:
                self.drifts += 1
                events.append(DriftEvent(time=time, detector="ADWIN", stream=stream, details={
                    "model": self.name, "mean_error_now": round(det.estimation, 6),
                    "window": int(det.width), "labels_learned": self.n_learned,
                }))
        return events

    def rolling_metrics(self) -> dict[str, float | int]:
        ys = [r[0] for r in self.recent]
        out: dict[str, float | int] = {
            "labels_learned": self.n_learned, "frauds_learned": self.n_frauds, "drift_events": self.drifts,
            "window": len(ys), "window_frauds": sum(ys),
        }
        out["river_ap"] = average_precision(ys, [r[1] for r in self.recent]) if ys else math.nan
        xgb = [(r[0], r[2]) for r in self.recent if not math.isnan(r[2])]
        out["xgb_ap"] = average_precision([a for a, _ in xgb], [b for _, b in xgb]) if xgb else math.nan
        return out


def make_model(name: str = DEFAULT_MODEL) -> OnlineModel:
    if name not in CANDIDATES:
        raise ValueError(f"unknown River model {name!r}; choose from {sorted(CANDIDATES)}")
    return OnlineModel(name)


__all__ = ["CANDIDATES", "DEFAULT_MODEL", "OnlineModel", "average_precision", "make_model"]
