"""The champion model as the scoring service uses it: loaded from the BentoML model store.

The registry saves the promoted model as ``fraud-champion`` (metadata: ``feature_names``, ``spec_version``,
``threshold``, ``source_tag``). ``load_champion`` turns it into a single-threaded booster plus what the
service needs to build the feature vector; ``save_standin_champion`` saves a small booster under the same
name for tests and benchmarks on a store that has no trained champion yet.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from bento.explanations import PathContributions
from ml.features.spec import FEATURE_NAMES, SPEC_VERSION
from ml.registry import CHAMPION_NAME
from ml.settings import get_settings

MODEL_NAME = CHAMPION_NAME
# Up to this many rows, contributions come from numpy (bento.explanations: 61 µs for one row against
# 317 µs through a DMatrix, 324 against 544 µs for 32 rows); XGBoost's own call wins from about 256 rows
# (1,024 rows: 10.8 ms against 14.8 ms).
PATHS_UP_TO = 128
DEFAULT_THRESHOLD = 0.5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    tag: str
    booster: xgb.Booster
    feature_names: tuple[str, ...]
    threshold: float
    spec_version: str
    source_tag: str
    exact_reasons: bool = False
    logistic: bool = False  # binary:logistic: probability = sigmoid(margin)
    paths: PathContributions | None = None  # the same Saabas contributions without a DMatrix (few rows)

    @property
    def columns(self) -> list[int] | None:
        """Where the model's columns sit in a spec-ordered feature matrix (None: the same order)."""
        if self.feature_names == FEATURE_NAMES:
            return None
        return [FEATURE_NAMES.index(n) for n in self.feature_names]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Fraud probabilities for rows of ``x`` (columns in ``feature_names`` order)."""
        return np.asarray(self.booster.inplace_predict(x), dtype=np.float64).reshape(-1)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature contributions (SHAP, log-odds), one column per feature; the bias column dropped."""
        return self.predict_explain(x)[1]

    def predict_explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and contributions from one DMatrix (building a DMatrix costs more than a one-row
        prediction, so both share it). Contributions are Saabas' path attributions (XGBoost's
        ``approx_contribs``): ~5x cheaper than exact TreeSHAP and as good for ranking reasons; set
        ``exact_reasons`` (FRAUD_EXACT_SHAP=1) for TreeSHAP. Columns are in ``feature_names`` order, which
        ``load_champion`` checked against the booster's own names."""
        if self.paths is not None and len(x) <= PATHS_UP_TO:
            return self.paths.predict_explain(x)
        dm = xgb.DMatrix(x, nthread=1)
        contribs = self.booster.predict(dm, pred_contribs=True, approx_contribs=not self.exact_reasons,
                                        validate_features=False)
        if self.logistic:  # contributions plus bias add up to the margin: no second pass over the trees
            proba = 1.0 / (1.0 + np.exp(-contribs.sum(axis=1, dtype=np.float64)))
        else:
            proba = np.asarray(self.booster.predict(dm, validate_features=False), np.float64).reshape(-1)
        return proba, contribs[:, :-1]


def _booster_from(model) -> xgb.Booster:
    import bentoml

    if model.info.module.endswith("xgboost"):
        loaded = bentoml.xgboost.load_model(model)
        return loaded if isinstance(loaded, xgb.Booster) else loaded.get_booster()
    for pattern in ("*.ubj", "*.json", "*.model"):  # a booster saved as a plain file by another framework
        files = sorted(Path(model.path).glob(pattern))
        if files:
            return xgb.Booster(model_file=str(files[0]))
    raise ValueError(f"{model.tag}: no XGBoost booster found (module {model.info.module!r})")


def load_champion(tag: str = f"{MODEL_NAME}:latest", threshold: float | None = None) -> Champion:
    """Load a champion and warm it up. Raises if it cannot be served with the current feature spec."""
    import bentoml

    model = bentoml.models.get(tag)
    meta = dict(model.info.metadata)
    names = tuple(meta.get("feature_names") or FEATURE_NAMES)
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"{model.tag} needs features the spec does not define: {unknown}")
    spec = str(meta.get("spec_version", ""))
    if spec and spec != SPEC_VERSION:
        log.warning("%s was trained on feature spec %s, serving spec is %s", model.tag, spec, SPEC_VERSION)
    booster = _booster_from(model)
    if booster.feature_names is not None and tuple(booster.feature_names) != names:
        raise ValueError(f"{model.tag}: booster columns {booster.feature_names} differ from metadata {names}")
    booster.set_param({"nthread": 1})  # one request = one small prediction; threads only add overhead
    thr = float(threshold if threshold is not None else meta.get("threshold", DEFAULT_THRESHOLD))
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    exact = get_settings().exact_shap
    champ = Champion(str(model.tag), booster, names, thr, spec, str(meta.get("source_tag", "")),
                     exact_reasons=exact, logistic=objective == "binary:logistic",
                     paths=None if exact else PathContributions.from_booster(booster))
    x = np.zeros((1, len(names)))
    for _ in range(3):  # warm up before serving: first predictions allocate caches
        champ.predict(x)
        champ.predict_explain(x)
    return champ


def use_project_model_store() -> None:
    """Point BentoML at the project's model store (``<FRAUD_DATA_DIR>/bentoml``) unless BENTOML_HOME is set.

    ``bentoml serve`` and ``bentoml build`` resolve BENTOML_HOME (default ``~/bentoml``) before they import
    the service, so setting the variable from the service module is too late for the CLI process itself:
    re-point its (lazily created) stores here, so that a plain ``bentoml serve`` after ``make demo`` finds the
    champion the demo promoted.
    """
    from ml.settings import export_tool_env

    user_set = bool(os.environ.get("BENTOML_HOME"))
    settings = export_tool_env()
    if user_set:
        return
    from bentoml._internal.configuration.containers import BentoMLContainer  # no public API for this

    home = str(settings.bentoml_home)
    if BentoMLContainer.bentoml_home.get() == home:
        return
    for sub in ("bentos", "models", "envs", "tmp"):
        (settings.bentoml_home / sub).mkdir(parents=True, exist_ok=True)
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.models import ModelStore

    BentoMLContainer.bentoml_home.set(home)
    BentoMLContainer.model_store_dir.set(f"{home}/models")
    BentoMLContainer.bento_store_dir.set(f"{home}/bentos")
    BentoMLContainer.model_store.set(ModelStore(f"{home}/models"))
    BentoMLContainer.bento_store.set(BentoStore(f"{home}/bentos"))
    BentoMLContainer.tmp_bento_store.set(BentoStore(f"{home}/tmp"))


def latest_tag() -> str | None:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return str(bentoml.models.get(f"{MODEL_NAME}:latest").tag)
    except NotFound:
        return None


def save_standin_champion(n_trees: int = 100, depth: int = 6, seed: int = 0, threshold: float = 0.5) -> str:
    """A small booster on synthetic data, saved as the champion (tests/benchmarks without a trained one)."""
    import bentoml

    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 20.0, size=(4000, len(FEATURE_NAMES)))
    y = (x[:, 0] + rng.normal(0, 20, len(x)) > 80).astype(int)
    booster = xgb.train({"max_depth": depth, "objective": "binary:logistic", "nthread": 1},
                        xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES)), num_boost_round=n_trees)
    model = bentoml.xgboost.save_model(
        MODEL_NAME, booster,
        labels={"role": "champion", "stand_in": "true"},
        metadata={"feature_names": list(FEATURE_NAMES), "spec_version": SPEC_VERSION,
                  "threshold": threshold, "source_tag": "stand-in"},
    )
    return str(model.tag)
