"""Matplotlib (Agg) figures as PNG bytes, and a helper to embed them in Dagster Markdown metadata."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def md_image(png: bytes, alt: str = "plot") -> str:
    """Markdown that embeds PNG bytes inline (Dagster renders data URIs in Markdown metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def to_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def roc_png(y: np.ndarray, score: np.ndarray, label: str = "model", auc: float | None = None) -> bytes:
    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})" if auc is not None else label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    return to_png(fig)


def pr_png(y: np.ndarray, score: np.ndarray, label: str = "model", ap: float | None = None) -> bytes:
    precision, recall, _ = precision_recall_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision, label=f"{label} (AP {ap:.3f})" if ap is not None else label)
    ax.axhline(float(np.mean(y)), color="k", ls="--", lw=0.8, label="fraud rate")
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    return to_png(fig)


def daily_png(days: list[str], values: list[float], ylabel: str = "Card precision@100") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(days, values, marker="o")
    ax.axhline(float(np.mean(values)) if values else 0.0, color="k", ls="--", lw=0.8, label="mean")
    ax.set(ylabel=ylabel, title=f"{ylabel} per test day", ylim=(0, max([1e-3, *values]) * 1.15))
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    return to_png(fig)


def calibration_png(bins: list[dict[str, float]]) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.plot([b["mean_score"] for b in bins], [b["fraud_rate"] for b in bins], marker="o", label="model")
    ax.set(xlabel="Mean score in bin", ylabel="Observed fraud rate", title="Calibration", xlim=(0, 1),
           ylim=(0, 1))
    ax.legend(loc="upper left")
    return to_png(fig)
