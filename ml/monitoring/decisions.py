"""Pure decision logic: drift signals of a day -> retrain yes/no, with the evidence behind it.

No I/O here: the Dagster checks, the sensor and the drift demo all call these functions, so the rule that
decides retraining is one piece of code, tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ml.monitoring.thresholds import DriftThresholds

FEATURE_DRIFT = "feature_drift"
SCORE_DRIFT = "score_drift"
QUALITY = "average_precision"
STREAM = "stream_drift_events"


@dataclass(frozen=True)
class Signal:
    """One check's verdict. ``fired`` is None when there was not enough data to judge."""

    name: str
    value: float | None
    threshold: float
    fired: bool | None
    needs_labels: bool
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        return self.fired is not None

    def summary(self) -> str:
        if not self.evaluated:
            return f"{self.name}: not evaluated ({self.detail.get('reason', 'no data')})"
        verb = "FIRED" if self.fired else "ok"
        return f"{self.name}: {verb} (value {self.value:.4g} vs threshold {self.threshold:.4g})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    day: str
    retrain: bool
    reasons: tuple[str, ...]
    signals: tuple[Signal, ...]

    @property
    def label_free_flag(self) -> bool:
        """Fired on a signal that needs no labels (what the detection delay is measured on)."""
        return any(s.fired and not s.needs_labels for s in self.signals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "retrain": self.retrain,
            "reasons": list(self.reasons),
            "signals": [s.to_dict() for s in self.signals],
        }


def _not_evaluated(name: str, threshold: float, needs_labels: bool, reason: str, **detail: Any) -> Signal:
    return Signal(name, None, threshold, None, needs_labels, {"reason": reason, **detail})


def feature_drift_signal(scores: Mapping[str, float], n_rows: int, t: DriftThresholds) -> Signal:
    """Share of monitored features whose drift score reaches ``feature_threshold``."""
    if n_rows < t.min_rows or not scores:
        return _not_evaluated(FEATURE_DRIFT, t.drifted_share, False, f"{n_rows} rows < min_rows {t.min_rows}")
    drifted = sorted((k for k, v in scores.items() if v >= t.feature_threshold), key=lambda k: -scores[k])
    share = len(drifted) / len(scores)
    return Signal(
        FEATURE_DRIFT,
        share,
        t.drifted_share,
        share >= t.drifted_share,
        False,
        {
            "method": t.feature_method,
            "column_threshold": t.feature_threshold,
            "drifted": drifted,
            "n_drifted": len(drifted),
            "n_features": len(scores),
            "rows": n_rows,
            "scores": {k: round(float(v), 4) for k, v in sorted(scores.items(), key=lambda kv: -kv[1])},
        },
    )


def score_drift_signal(score: float | None, n_rows: int, t: DriftThresholds) -> Signal:
    if score is None or n_rows < t.min_rows:
        return _not_evaluated(SCORE_DRIFT, t.score_threshold, False, f"{n_rows} rows < min_rows {t.min_rows}")
    return Signal(
        SCORE_DRIFT,
        float(score),
        t.score_threshold,
        score >= t.score_threshold,
        False,
        {"method": t.score_method, "rows": n_rows},
    )


def quality_signal(ap: float | None, champion_ap: float | None, n_frauds: int, t: DriftThresholds) -> Signal:
    """Fires when the day's AP is below the champion's own evaluation by more than the tolerance."""
    if champion_ap is None or not math.isfinite(champion_ap):
        return _not_evaluated(QUALITY, t.ap_tolerance, True, "champion has no recorded average precision")
    floor = champion_ap - t.ap_tolerance
    if ap is None or not math.isfinite(ap) or n_frauds < t.min_frauds_for_ap:
        return _not_evaluated(
            QUALITY,
            floor,
            True,
            f"{n_frauds} labelled frauds < {t.min_frauds_for_ap}",
            champion_ap=champion_ap,
        )
    return Signal(
        QUALITY,
        float(ap),
        floor,
        ap < floor,
        True,
        {"champion_ap": champion_ap, "tolerance": t.ap_tolerance, "frauds": n_frauds},
    )


def drift_event_key(e: Mapping[str, Any]) -> Any:
    """What makes a drift event itself: its id (the worker's outputs are at least once, so an event may be
    written again after a crash, with the same id), or for a line without one its detector, stream, time
    and label count."""
    if e.get("id"):
        return str(e["id"])
    details = e.get("details")
    seq = details.get("labels_learned") if isinstance(details, Mapping) else None
    return (str(e.get("detector")), str(e.get("stream")), str(e.get("time")), str(seq))


def stream_signal(events: Sequence[Mapping[str, Any]] | None, t: DriftThresholds) -> Signal:
    """Distinct drift events of the day (repeats of one event count once) against ``stream_events``."""
    if events is None:
        return _not_evaluated(STREAM, t.stream_events, True, "no drift events file (stream worker not run)")
    by_detector: dict[str, int] = {}
    seen: set[Any] = set()
    for e in events:
        k = drift_event_key(e)
        if k in seen:
            continue
        seen.add(k)
        key = f"{e.get('detector', '?')}/{e.get('stream', '?')}"
        by_detector[key] = by_detector.get(key, 0) + 1
    n = len(seen)
    return Signal(STREAM, float(n), t.stream_events, n >= t.stream_events, True,
                  {"by_detector": by_detector, "repeats_ignored": len(events) - n})


def decide(day: str, signals: Sequence[Signal]) -> Decision:
    """Retrain when any evaluated signal fired. Each reason names the signal and its evidence."""
    fired = [s for s in signals if s.fired]
    return Decision(day, bool(fired), tuple(s.summary() for s in fired), tuple(signals))
