"""Evidently (0.7, current API) reports for one day: feature drift, prediction (score) drift, quality.

Each ``*_report`` returns the Evidently ``Snapshot`` plus the numbers the checks need; ``save_report``
writes the HTML (and JSON) under ``reports_dir/drift/<day>/`` and ``log_run`` adds the snapshot to the local
Evidently workspace (``data_dir/evidently``) so ``evidently ui --workspace data/evidently`` shows every day
over time. Reference data = a sample of the champion's training window; current = the day.

Frames are polars (read from DuckDB as Arrow); ``to_evidently`` is the one place they become pandas, because
Evidently's ``Dataset`` takes pandas only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from duckdb import ColumnExpression, ConstantExpression, FunctionExpression
from evidently import BinaryClassification, DataDefinition, Dataset, Report
from evidently.core.container import MetricContainer
from evidently.core.metric_types import CountValue, Metric, MetricResult, SingleValue
from evidently.core.report import Snapshot
from evidently.metrics import (
    FNR,
    FPR,
    Accuracy,
    DriftedColumnsCount,
    F1Score,
    LogLoss,
    Precision,
    Recall,
    RocAuc,
    ValueDrift,
)
from evidently.presets import ClassificationPreset, DataDriftPreset
from sklearn.metrics import average_precision_score

from ml.data.warehouse import TIME_ORDER, column_exprs, in_window
from ml.features.spec import FEATURES_TABLE
from ml.monitoring.thresholds import DriftThresholds
from ml.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

SCORE = "score"
TARGET = "tx_fraud"

PROJECTS = {
    "feature_drift": "fraud: feature drift",
    "prediction_drift": "fraud: prediction drift",
    "classification_quality": "fraud: classification quality",
}


@dataclass(frozen=True)
class FeatureDrift:
    snapshot: Snapshot
    scores: dict[str, float]  # per monitored feature, Evidently's drift score
    share: float  # Evidently's DriftedColumnsCount share
    rows: int


@dataclass(frozen=True)
class ScoreDrift:
    snapshot: Snapshot
    score: float
    rows: int
    reference_mean: float
    current_mean: float


@dataclass(frozen=True)
class Quality:
    snapshot: Snapshot
    average_precision: float  # nan when the day has no fraud
    metrics: dict[str, float]  # Evidently's classification metrics (accuracy, precision, recall, roc_auc...)
    rows: int
    frauds: int


def to_datetime(value: str | date | datetime) -> datetime:
    """A day or instant as a ``datetime`` (ISO 8601 text, a ``date`` at midnight, a ``datetime`` as is)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    return datetime.fromisoformat(value)


def to_evidently(frame: pl.DataFrame) -> pd.DataFrame:
    """The pandas frame Evidently's ``Dataset.from_pandas`` needs: the only polars -> pandas conversion."""
    return frame.to_pandas()


def load_features(
    con: Any,
    start: str | date | datetime,
    end: str | date | datetime,
    columns: tuple[str, ...],
    sample: int | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """Feature rows with ``tx_datetime`` in [start, end) (plus ids, label, label_time), optionally sampled.

    Sampling is deterministic (hash of the transaction id), so the same window gives the same reference.
    """
    names = ("transaction_id", "tx_datetime", TARGET, "label_time", *columns)
    # A cursor of its own: a result the caller left unfinished on ``con`` must not block these reads.
    with con.cursor() as cur:
        rows = cur.table(FEATURES_TABLE).filter(in_window(to_datetime(start), to_datetime(end)))
        if sample and rows.aggregate("count(*)").fetchall()[0][0] > sample:
            salted = FunctionExpression("concat", ColumnExpression("transaction_id"), ConstantExpression(str(seed)))
            rows = rows.sort(FunctionExpression("hash", salted)).limit(int(sample))
        else:
            rows = rows.sort(*column_exprs(TIME_ORDER))
        return rows.select(*column_exprs(names)).pl()


def _numeric(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    return frame.select(pl.col(columns).cast(pl.Float64))


def feature_drift_report(
    reference: pl.DataFrame, current: pl.DataFrame, t: DriftThresholds, day: str | date | datetime
) -> FeatureDrift:
    """Evidently's data drift preset on the monitored features: each one's drift score and the drifted share."""
    cols = list(t.features)
    missing = [c for c in cols if c not in reference.columns or c not in current.columns]
    if missing:
        raise ValueError(f"feature drift needs columns {missing} in both reference and current data")
    definition = DataDefinition(numerical_columns=cols)
    preset = DataDriftPreset(columns=cols, num_method=t.feature_method, num_threshold=t.feature_threshold,
                             drift_share=t.drifted_share)
    snap = Report([preset]).run(
        Dataset.from_pandas(to_evidently(_numeric(current, cols)), data_definition=definition),
        Dataset.from_pandas(to_evidently(_numeric(reference, cols)), data_definition=definition),
        timestamp=to_datetime(day),
        tags=["feature_drift"],
        name=f"feature drift {to_datetime(day):%Y-%m-%d}",
    )
    scores: dict[str, float] = {}
    share = float("nan")
    for metric, result in _results(snap, preset):
        if isinstance(metric, ValueDrift) and isinstance(result, SingleValue):
            scores[metric.column] = float(result.value)
        elif isinstance(metric, DriftedColumnsCount) and isinstance(result, CountValue):
            share = float(result.share.value)
    return FeatureDrift(snap, scores, share, len(current))


def score_drift_report(
    reference_scores: np.ndarray, current_scores: np.ndarray, t: DriftThresholds, day: str | date | datetime
) -> ScoreDrift:
    """Drift of the champion's score distribution: the day vs. the reference window."""
    definition = DataDefinition(numerical_columns=[SCORE])
    ref = pl.DataFrame({SCORE: np.asarray(reference_scores, dtype="float64")})
    cur = pl.DataFrame({SCORE: np.asarray(current_scores, dtype="float64")})
    metric = ValueDrift(column=SCORE, method=t.score_method, threshold=t.score_threshold)
    snap = Report([metric]).run(
        Dataset.from_pandas(to_evidently(cur), data_definition=definition),
        Dataset.from_pandas(to_evidently(ref), data_definition=definition),
        timestamp=to_datetime(day),
        tags=["prediction_drift"],
        name=f"prediction drift {to_datetime(day):%Y-%m-%d}",
    )
    value = float(snap.context.get_metric_result(metric).value)
    return ScoreDrift(snap, value, len(cur), float(ref[SCORE].mean()), float(cur[SCORE].mean()))


# The classification preset's single-number metrics kept as Dagster metadata (its per-label ones are not).
QUALITY_METRICS = (Accuracy, Precision, Recall, F1Score, RocAuc, LogLoss, FPR, FNR)


def quality_report(
    labels: np.ndarray, scores: np.ndarray, threshold: float, day: str | date | datetime
) -> Quality:
    """Classification quality of the day once its labels are known; AP computed with scikit-learn
    (Evidently 0.7 has no average-precision metric)."""
    y = np.asarray(labels).astype("int64")
    p = np.asarray(scores, dtype="float64")
    if len(y) != len(p) or len(y) == 0:
        raise ValueError(
            f"quality needs as many labels as scores and at least one row ({len(y)} vs {len(p)})"
        )
    frauds = int(y.sum())
    ap = float(average_precision_score(y, p)) if 0 < frauds < len(y) else float("nan")
    frame = pl.DataFrame({TARGET: y, SCORE: p})
    definition = DataDefinition(
        numerical_columns=[SCORE],
        categorical_columns=[TARGET],
        classification=[BinaryClassification(target=TARGET, prediction_probas=SCORE)],
    )
    preset = ClassificationPreset(probas_threshold=threshold)
    snap = Report([preset]).run(
        Dataset.from_pandas(to_evidently(frame), data_definition=definition),
        None,
        timestamp=to_datetime(day),
        tags=["classification_quality"],
        metadata={"average_precision": ap},
        name=f"classification quality {to_datetime(day):%Y-%m-%d}",
    )
    metrics = {
        type(metric).__name__.lower(): float(result.value)
        for metric, result in _results(snap, preset)
        if isinstance(metric, QUALITY_METRICS) and isinstance(result, SingleValue)
    }
    return Quality(snap, ap, metrics, len(y), frauds)


def _results(snap: Snapshot, preset: MetricContainer) -> Iterator[tuple[Metric, MetricResult]]:
    """Each metric the preset generated with its typed result."""
    for metric in preset.list_metrics(snap.context):
        yield metric, snap.context.get_metric_result(metric)


def report_dir(settings: Settings, day: str | date | datetime) -> Path:
    return settings.reports_dir / "drift" / f"{to_datetime(day):%Y-%m-%d}"


def save_report(snapshot: Snapshot, settings: Settings, kind: str, day: str | date | datetime) -> Path:
    """Write ``<kind>.html`` and ``<kind>.json`` for the day; returns the HTML path."""
    folder = report_dir(settings, day)
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f"{kind}.html"
    snapshot.save_html(str(html))
    snapshot.save_json(str(folder / f"{kind}.json"))
    return html


def workspace_path(settings: Settings) -> Path:
    return settings.data_dir / "evidently"


def log_run(snapshot: Snapshot, settings: Settings, kind: str) -> str:
    """Add the snapshot to the kind's project of the local Evidently workspace; returns the snapshot id."""
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(workspace_path(settings)))
    name = PROJECTS[kind]
    found = ws.search_project(name)
    project = found[0] if found else _create_project(ws, name, kind)
    return str(ws.add_run(project.id, snapshot).id)


def _create_project(ws: Any, name: str, kind: str) -> Any:
    """A project with a dashboard of the kind's key numbers over time."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    project = ws.create_project(name, description="Daily reports written by the monitoring stage.")
    if kind == "feature_drift":
        values = [
            PanelMetric(
                legend="drifted share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"}
            )
        ]
    elif kind == "prediction_drift":
        values = [PanelMetric(legend="score drift", metric="ValueDrift", metric_labels={"column": SCORE})]
    else:
        values = [
            PanelMetric(legend="ROC AUC", metric="RocAuc"),
            PanelMetric(legend="recall", metric="Recall"),
        ]
    try:
        project.dashboard.add_panel(line_plot_panel(title=name, values=values), tab="Over time")
    except Exception:  # a dashboard is a convenience; the runs are what matter
        pass
    return project


def to_jsonable(value: Any) -> Any:
    """Floats made JSON-safe (nan -> None), for metadata and reports."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value

