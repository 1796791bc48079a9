"""Hook for the online (River) model's opinion: the streaming worker checkpoints it, the service reads it.

``load_river_checkpoint`` returns the latest checkpoint at ``data_dir/streaming/river/latest.pkl``, or None
when there is none (no streaming worker has run). The streaming stage owns the checkpoint's format; this
side only needs an object with River's ``predict_proba_one(features) -> {label: probability}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def checkpoint_path(data_dir: Path) -> Path:
    return Path(data_dir) / "streaming" / "river" / "latest.pkl"


def load_river_checkpoint(data_dir: Path) -> Any | None:
    path = checkpoint_path(data_dir)
    if not path.exists():
        return None
    try:
        from streaming.checkpoint import load_model  # the streaming stage's reader of its own format

        return load_model(path)
    except Exception as exc:  # a half-written or incompatible checkpoint must not break scoring
        log.warning("cannot load River checkpoint %s: %s", path, exc)
        return None


def river_opinion(model: Any | None, features: dict[str, float]) -> float | None:
    """The online model's fraud probability, or None without a model (or if it cannot answer)."""
    if model is None:
        return None
    try:
        if hasattr(model, "predict"):  # streaming.river_model.OnlineModel
            return float(model.predict(features))
        proba = model.predict_proba_one(features)  # a bare River classifier
        return float(proba.get(1, proba.get(True, 0.0)))
    except Exception as exc:
        log.debug("River model gave no opinion: %s", exc)
        return None


class RiverWatcher:
    """Reloads the checkpoint when its file changes (checked at most every ``interval_s`` seconds)."""

    def __init__(self, data_dir: Path, interval_s: float = 10.0):
        self.path = checkpoint_path(data_dir)
        self.data_dir = Path(data_dir)
        self.interval_s = interval_s
        self.model: Any | None = None
        self._mtime: float | None = None

    def refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.model, self._mtime = None, None
            return
        if mtime != self._mtime:
            self.model, self._mtime = load_river_checkpoint(self.data_dir), mtime
