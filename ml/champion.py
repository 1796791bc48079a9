"""The champion: the promoted model as every stage uses it (scoring service, stream worker, monitoring and
``fraud score``), and the one loader that reads it from the BentoML model store (``BENTOML_HOME``).

The registry (``ml.registry``) saves the champion as ``fraud-champion`` with the candidate's metadata
(``feature_names``, ``spec_version``, ``threshold``, ``train_start``/``train_end``, ``metrics``, and
``source_tag``, the candidate it came from).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from ml import registry
from ml.features.spec import FEATURE_NAMES, SPEC_VERSION
from ml.registry import CHAMPION_NAME

if TYPE_CHECKING:
    import bentoml
    import pandas as pd
    import xgboost as xgb

__all__ = ["CHAMPION_NAME", "Champion", "NoChampion", "champion_tag", "load_champion"]
DEFAULT_THRESHOLD = 0.5
log = logging.getLogger(__name__)


class NoChampion(LookupError):
    """The model store holds no champion yet."""


@dataclass(frozen=True)
class Champion:
    """A booster with the feature columns it reads, its decision threshold and its registry metadata."""

    tag: str
    booster: xgb.Booster
    feature_names: tuple[str, ...]
    threshold: float = DEFAULT_THRESHOLD
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[int] | None:
        """Where the model's columns sit in a spec-ordered feature matrix (None: the same order)."""
        if self.feature_names == FEATURE_NAMES:
            return None
        return [FEATURE_NAMES.index(n) for n in self.feature_names]

    def predict(self, x: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Fraud probabilities for the rows of ``x``: a matrix with columns in ``feature_names`` order, or a
        DataFrame that holds those columns (by name)."""
        if hasattr(x, "columns"):
            x = x[list(self.feature_names)].to_numpy(dtype=np.float32)
        return np.asarray(self.booster.inplace_predict(x), dtype=np.float64).reshape(-1)

    def predict_spec(self, spec_x: np.ndarray) -> np.ndarray:
        """``predict`` for a feature matrix in the spec's column order (what the online features give)."""
        columns = self.columns
        return self.predict(spec_x if columns is None else spec_x[:, columns])

    @property
    def source_tag(self) -> str:
        return str(self.metadata.get("source_tag", ""))

    @property
    def train_start(self) -> datetime:
        return _datetime(self.metadata["train_start"])

    @property
    def train_end(self) -> datetime:
        return _datetime(self.metadata["train_end"])

    @property
    def average_precision(self) -> float | None:
        """The champion's own average precision: its gate evaluation if any, else its validation AP."""
        decision = self.metadata.get("decision") or {}
        for source in (decision.get("challenger_metrics") or {}, self.metadata.get("metrics") or {}):
            for key in ("average_precision", "valid_average_precision"):
                value = source.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    return float(value)
        return None


def _datetime(value: Any) -> datetime:
    import pandas as pd

    return pd.Timestamp(value).to_pydatetime()


def champion_tag() -> str | None:
    """The current champion's tag, or None while there is none."""
    model = registry.champion()
    return str(model.tag) if model is not None else None


def load_champion(model: str | bentoml.Model | None = None, *, threshold: float | None = None,
                  nthread: int | None = None) -> Champion:
    """The champion (or ``model``: a tag, a bare version being a ``fraud-xgb`` candidate, or a stored model)
    as a ``Champion``. ``threshold`` overrides the model's own; ``nthread`` caps XGBoost's threads.

    Raises ``NoChampion`` when there is none yet, ``ValueError`` when the model cannot be scored with the
    current feature spec."""
    if model is None:
        model = registry.champion()
        if model is None:
            raise NoChampion("no champion model yet: train one (Dagster group 'training', its gate promotes) "
                             "or promote a model with `fraud models promote TAG`")
    elif isinstance(model, str):
        model = registry.get(model)
    meta = dict(model.info.metadata or {})
    names = tuple(meta.get("feature_names") or FEATURE_NAMES)
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"{model.tag} needs features the spec does not define: {unknown}")
    spec = str(meta.get("spec_version", ""))
    if spec and spec != SPEC_VERSION:
        log.warning("%s was trained on feature spec %s, the current spec is %s", model.tag, spec, SPEC_VERSION)
    booster = registry.load_booster(model)
    if booster.feature_names is not None and tuple(booster.feature_names) != names:
        raise ValueError(f"{model.tag}: booster columns {booster.feature_names} differ from metadata {names}")
    if nthread is not None:
        booster.set_param({"nthread": nthread})
    thr = float(threshold if threshold is not None else meta.get("threshold", DEFAULT_THRESHOLD))
    return Champion(str(model.tag), booster, names, thr, meta)
