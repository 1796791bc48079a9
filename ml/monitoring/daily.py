"""One day of monitoring against the champion: the reports, the signals and the retraining decision.

Shared by the Dagster assets (``orchestration/assets/monitoring.py``) and the drift demo, so the UI and the
measured loop run the same code. Reads the warehouse through a DuckDB connection (read-only is enough) into
polars frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml.champion import Champion, load_champion
from ml.monitoring import drift
from ml.monitoring.decisions import Signal, feature_drift_signal, quality_signal, score_drift_signal, stream_signal
from ml.monitoring.thresholds import DriftThresholds
from ml.settings import Settings


def champion_from_model(model: Any) -> Champion:
    """A ``Champion`` from a BentoML model of the registry (``ml.registry.champion()``)."""
    champ = load_champion(model)
    _ = champ.train_start, champ.train_end  # KeyError (a LookupError) without a training window to compare to
    return champ


def current_champion() -> Champion:
    return champion_from_model(None)  # NoChampion (a LookupError) while there is none


def day_bounds(day: str | datetime) -> tuple[datetime, datetime]:
    start = drift.to_datetime(day).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def champion_scores(champ: Champion, frame: pl.DataFrame) -> np.ndarray:
    """The champion's fraud probabilities for the rows of a feature frame (its columns picked by name)."""
    return champ.predict(frame.select(list(champ.feature_names)).to_numpy().astype(np.float32, copy=False))


class Reference:
    """The champion's reference sample (features and scores), loaded once per champion."""

    def __init__(self, con: Any, champ: Champion, t: DriftThresholds):
        cols = tuple(dict.fromkeys((*t.features, *champ.feature_names)))
        self.frame = drift.load_features(
            con, champ.train_start, champ.train_end, cols, sample=t.reference_sample
        )
        if len(self.frame) < t.min_rows:
            raise ValueError(
                f"champion {champ.tag}'s training window {champ.train_start}..{champ.train_end} has "
                f"{len(self.frame)} rows in the warehouse (< {t.min_rows}): is it loaded?"
            )
        self.scores = champion_scores(champ, self.frame)
        self.tag = champ.tag


@dataclass
class DayReports:
    day: str
    feature: drift.FeatureDrift | None
    score: drift.ScoreDrift | None
    signals: list[Signal]
    paths: dict[str, str]
    current_scores: np.ndarray | None = None
    current_labels: np.ndarray | None = None


def drift_day(
    con: Any,
    champ: Champion,
    ref: Reference,
    day: str,
    t: DriftThresholds,
    settings: Settings | None = None,
    stream_events: list[dict] | None = None,
    save: bool = True,
) -> DayReports:
    """Label-free reports of ``day`` (feature and score drift) with their signals; saved if ``settings``."""
    start, end = day_bounds(day)
    cols = tuple(dict.fromkeys((*t.features, *champ.feature_names)))
    cur = drift.load_features(con, start, end, cols)
    paths: dict[str, str] = {}
    feature = score = None
    scores = champion_scores(champ, cur) if len(cur) else np.zeros(0)
    if len(cur) >= t.min_rows:
        feature = drift.feature_drift_report(ref.frame, cur, t, start)
        score = drift.score_drift_report(ref.scores, scores, t, start)
        if settings is not None and save:
            for kind, snap in (("feature_drift", feature.snapshot), ("prediction_drift", score.snapshot)):
                paths[kind] = str(drift.save_report(snap, settings, kind, start))
                drift.log_run(snap, settings, kind)
    signals = [
        feature_drift_signal(feature.scores if feature else {}, len(cur), t),
        score_drift_signal(score.score if score else None, len(cur), t),
        stream_signal(stream_events, t),
    ]
    labels = cur["tx_fraud"].to_numpy() if len(cur) else None
    return DayReports(day, feature, score, signals, paths, scores, labels)


def quality_day(
    con: Any,
    champ: Champion,
    day: str,
    t: DriftThresholds,
    known_at: datetime | None = None,
    settings: Settings | None = None,
    save: bool = True,
) -> tuple[drift.Quality | None, Signal, str]:
    """Classification quality of ``day`` with the labels known at ``known_at`` (default: all loaded)."""
    start, end = day_bounds(day)
    cur = drift.load_features(con, start, end, champ.feature_names)
    labelled = pl.col("tx_fraud").is_not_null()
    if known_at is not None:
        labelled &= pl.col("label_time").is_not_null() & (pl.col("label_time") <= known_at)
    cur = cur.filter(labelled)
    if len(cur) == 0:
        return None, quality_signal(None, champ.average_precision, 0, t), ""
    q = drift.quality_report(cur["tx_fraud"].to_numpy(), champion_scores(champ, cur), champ.threshold, start)
    path = ""
    if settings is not None and save:
        path = str(drift.save_report(q.snapshot, settings, "classification_quality", start))
        drift.log_run(q.snapshot, settings, "classification_quality")
    return q, quality_signal(q.average_precision, champ.average_precision, q.frauds, t), path


def read_stream_events(settings: Settings, day: str) -> list[dict] | None:
    """Drift events of the stream worker on ``day`` (None when the worker never wrote the file)."""
    path: Path = settings.drift_events_path
    if not path.exists():
        return None
    start, end = day_bounds(day)
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            at = drift.to_datetime(event["time"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line while the worker writes: skip it, the next read gets it whole
        if at.tzinfo is not None:
            at = at.astimezone(UTC).replace(tzinfo=None)
        if start <= at < end:
            out.append(event)
    return out

