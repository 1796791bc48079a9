"""Hook for the online (River) model's opinion: the streaming worker checkpoints it, the service reads it.

``load_river_checkpoint`` returns the latest checkpoint at ``data_dir/streaming/river/latest.pkl``, or None
when there is none (no streaming worker has run). The streaming stage owns the checkpoint's format; this
side only needs an object with River's ``predict_proba_one(features) -> {label: probability}``.

The checkpoint is signed (``ml.signing``) and verified before it is unpickled: a file planted in the data
directory is refused (logged once, with its path and the reason) and the service keeps the River model it
has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def checkpoint_path(data_dir: Path) -> Path:
    from ml.online.checkpoint import HEAD
    from ml.settings import RIVER_CHECKPOINT_SUBDIR

    return Path(data_dir) / RIVER_CHECKPOINT_SUBDIR / HEAD


def load_river_checkpoint(data_dir: Path) -> Any | None:
    """The checkpoint's River model, or None if there is none; raises if it cannot be loaded (refused)."""
    from ml.online.checkpoint import load_model  # the streaming stage's reader of its own format

    return load_model(checkpoint_path(data_dir))


def river_opinion(model: Any | None, features: dict[str, float]) -> float | None:
    """The online model's fraud probability, or None without a model (or if it cannot answer)."""
    if model is None:
        return None
    try:
        if hasattr(model, "predict"):  # ml.online.river_model.OnlineModel
            return float(model.predict(features))
        proba = model.predict_proba_one(features)  # a bare River classifier
        return float(proba.get(1, proba.get(True, 0.0)))
    except Exception as exc:
        log.debug("River model gave no opinion: %s", exc)
        return None


def river_opinions(model: Any | None, rows: np.ndarray, names: Sequence[str]) -> list[float | None]:
    """``river_opinion`` for each row of a feature matrix (columns ``names``). The default pipeline (scaler
    and logistic regression) answers a whole batch in one vectorised call (River's ``predict_proba_many``);
    other models, and a batch it cannot answer, go row by row."""
    if model is None:
        return [None] * len(rows)
    inner = getattr(model, "model", model)  # ml.online.river_model.OnlineModel wraps the River estimator
    if len(rows) > 1 and hasattr(inner, "predict_proba_many"):
        try:
            import pandas as pd

            proba = inner.predict_proba_many(pd.DataFrame(rows, columns=list(names)))
            positive = next((c for c in (True, 1) if c in proba.columns), None)
            if positive is None:  # nothing learnt yet: as predict() answers
                return [0.0] * len(rows)
            return proba[positive].astype(float).tolist()
        except Exception as exc:
            log.debug("River model gave no batch opinion, row by row: %s", exc)
    return [river_opinion(model, dict(zip(names, row, strict=True))) for row in rows.tolist()]


class RiverWatcher:
    """Reloads the checkpoint when its file changes (checked at most every ``interval_s`` seconds).

    A file that cannot be loaded (refused by its signature, half-written, another format) leaves the current
    model in place; it is reported once, not at every check, and the next file the worker commits is
    tried."""

    def __init__(self, data_dir: Path, interval_s: float = 10.0):
        self.path = checkpoint_path(data_dir)
        self.data_dir = Path(data_dir)
        self.interval_s = interval_s
        self.model: Any | None = None
        self.error: str | None = None  # why the current file was not loaded
        self._seen: tuple[int, int, int] | None = None

    def refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.model, self._seen, self.error = None, None, None
            return
        seen = (st.st_mtime_ns, st.st_ino, st.st_size)  # a replaced file has another inode
        if seen == self._seen:
            return
        self._seen = seen
        try:
            model = load_river_checkpoint(self.data_dir)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("River checkpoint %s not loaded, keeping the current River model: %s", self.path,
                      self.error)
            return
        self.model, self.error = model, None
        if model is not None:  # the first batch call imports pandas' machinery: not in a request
            from ml.features.spec import FEATURE_NAMES

            river_opinions(self.model, np.zeros((2, len(FEATURE_NAMES))), FEATURE_NAMES)
