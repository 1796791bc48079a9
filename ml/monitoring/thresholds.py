"""When to retrain: every threshold of the drift checks, with the reasoning behind it.

The values were tuned on the drift demo's simulations (``make drift-demo``): a stable simulation must raise
at most one alarm per 30 days, the injected drift (card testing + genuine spending shift) must be flagged
within a day of its onset (docs/adr/0018). Change them in ``DriftThresholds`` (or via ``FRAUD_DRIFT_*``
variables, see ``from_env``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from ml.features.spec import FEATURE_NAMES
from ml.settings import get_settings

# Distance methods of Evidently (higher = more drift; drift when score >= threshold). p-value tests are left
# out on purpose: with thousands of rows a day they call every tiny, harmless difference significant.
DISTANCE_METHODS = frozenset({"wasserstein", "psi", "jensenshannon", "hellinger", "kl_div"})

# Calendar features are a function of the date alone: a Saturday's rows all have tx_during_weekend = 1, so
# comparing one day with a multi-week reference would "drift" every weekend. They carry no drift signal.
CALENDAR_FEATURES = ("tx_during_weekend",)


def _monitored() -> tuple[str, ...]:
    return tuple(f for f in FEATURE_NAMES if f not in CALENDAR_FEATURES)


@dataclass(frozen=True)
class DriftThresholds:
    # -- feature drift (no labels needed) -------------------------------------------------------------
    features: tuple[str, ...] = field(default_factory=_monitored)
    # Normalised Wasserstein distance, Evidently's default for numeric columns over 1000 rows: robust to sample
    # size (unlike KS p-values); 0.1 = "moved by a tenth of a reference std", above a stable day's noise.
    feature_method: str = "wasserstein"
    feature_threshold: float = 0.1
    # One drifting feature is common noise on small days; a quarter of them moving together is a shift in
    # behaviour. Shifts that move few features are left to the score check below.
    drifted_share: float = 0.25

    # -- prediction (score) drift (no labels needed) --------------------------------------------------
    # Scores summarise the features the model relies on, so a shift there matters even when few features
    # move; 0.15 of the (small) reference score std is above a stable day's noise.
    score_method: str = "wasserstein"
    score_threshold: float = 0.15

    # -- classification quality (needs the day's labels, known after the label delay) ------------------
    # The day's AP vs. the champion's own evaluation: daily AP over a few dozen frauds is noisy, so only a
    # drop larger than that noise is an alarm.
    ap_tolerance: float = 0.15
    # Fewer frauds than this in a day and AP is too noisy to judge: the check reports "not evaluated".
    min_frauds_for_ap: int = 10

    # -- stream drift events (River's ADWIN detectors on the error streams) ----------------------------
    # ADWIN also fires on the normal ebb and flow of errors; several events on one day point at a change.
    stream_events: int = 3

    # -- data sizes ----------------------------------------------------------------------------------
    # Rows sampled from the champion's training window: enough for stable histograms, few enough for seconds.
    reference_sample: int = 5000
    # Below this many rows in the day the drift checks report "not evaluated" rather than guess.
    min_rows: int = 200

    def __post_init__(self) -> None:
        for name in ("feature_method", "score_method"):
            if getattr(self, name) not in DISTANCE_METHODS:
                raise ValueError(
                    f"{name} must be one of {sorted(DISTANCE_METHODS)}, not {getattr(self, name)!r}"
                )
        unknown = set(self.features) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown monitored features {sorted(unknown)}")
        if not self.features:
            raise ValueError("at least one feature must be monitored")
        if not 0 < self.drifted_share <= 1:
            raise ValueError("drifted_share must be in (0, 1]")
        for name in ("feature_threshold", "score_threshold", "ap_tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.reference_sample < 100 or self.min_rows < 1 or self.stream_events < 1:
            raise ValueError("reference_sample >= 100, min_rows >= 1 and stream_events >= 1 are required")

    @classmethod
    def from_env(cls) -> DriftThresholds:
        """Defaults overridden by the ``FRAUD_DRIFT_<FIELD>`` settings (e.g. FRAUD_DRIFT_DRIFTED_SHARE=0.3)."""
        settings = get_settings()
        overrides: dict[str, object] = {}
        for f in fields(cls):
            value = getattr(settings, f"drift_{f.name}")
            if value is None:
                continue
            if f.name == "features":
                value = tuple(s.strip() for s in value.split(",") if s.strip())
            overrides[f.name] = value
        return replace(cls(), **overrides)
