"""Evaluation metrics, following Le Borgne et al. (2022), *Reproducible ML for Credit Card Fraud Detection*,
chapters 4, 5 and 7.

Protocol (``evaluate``):
- Test rows are the labelled transactions of the test days. On each test day d, the transactions of cards
  *known compromised* at the start of d are removed: cards with a fraud whose ``label_time`` <= d 00:00,
  among the frauds since ``known_since`` (``EvalData.known_card``/``known_label_time``; callers use the
  book's span, test start - 14 days = its 7-day training window + 7-day delay). With a fixed 7-day delay this
  is exactly the book's set: frauds of the training week and of the days up to d - delay - 1. Every metric
  is computed on what remains, as in the book.
- AUC ROC and average precision over all remaining test transactions.
- Card precision@k per day: a card's score is its highest transaction score that day and its label the
  highest label; precision among the k cards with the highest scores; cards detected (true positives in a
  day's top k) are removed from the later days. The mean over the test days is reported.
- Precision/recall at an alert budget: alerts are the transactions scoring at or above a threshold chosen
  beforehand (on the validation window, see ``threshold_for_budget``), so the figure is honest.
- Calibration: predicted vs observed fraud rate in score bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass
class EvalData:
    """Scored test rows (one per transaction)."""

    day: np.ndarray  # datetime64[D] of tx_datetime
    card: np.ndarray  # customer_id
    y: np.ndarray  # 0/1 labels
    score: np.ndarray
    # Past frauds (card, label_time), test window included: the source of known-compromised cards.
    known_card: np.ndarray | None = None
    known_label_time: np.ndarray | None = None


@dataclass
class DailyCardPrecision:
    days: list[str]
    precision: list[float]
    compromised_cards: list[int]  # compromised cards left to find that day (after removals)

    @property
    def mean(self) -> float:
        return float(np.mean(self.precision)) if self.precision else float("nan")


@dataclass
class Metrics:
    auc_roc: float
    average_precision: float
    card_precision_at_k: float
    k: int
    daily: DailyCardPrecision
    n_transactions: int
    n_frauds: int
    removed_known_compromised: int
    alert: dict[str, float] = field(default_factory=dict)
    calibration: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """The flat numbers the registry and the gate record."""
        out = {
            "auc_roc": self.auc_roc,
            "average_precision": self.average_precision,
            f"card_precision_at_{self.k}": self.card_precision_at_k,
            "n_transactions": float(self.n_transactions),
            "n_frauds": float(self.n_frauds),
        }
        out.update({f"alert_{k}": v for k, v in self.alert.items()})
        return {k: round(float(v), 6) for k, v in out.items()}


def known_compromised_mask(data: EvalData) -> np.ndarray:
    """True for test rows whose card had a fraud with label known at the start of the row's day."""
    assert data.known_card is not None and data.known_label_time is not None
    # A card is known on day d iff its earliest known fraud label time is <= d 00:00.
    first_known = (pl.DataFrame({"card": data.known_card, "known": data.known_label_time.astype("datetime64[us]")})
                   .group_by("card").agg(pl.col("known").min()))
    rows = pl.DataFrame({"day": data.day.astype("datetime64[D]"), "card": data.card})
    return (rows.join(first_known, on="card", how="left", maintain_order="left")
            .select((pl.col("known") <= pl.col("day").cast(pl.Datetime("us"))).fill_null(False))
            .to_series().to_numpy())


def card_precision_top_k(day: np.ndarray, card: np.ndarray, y: np.ndarray, score: np.ndarray, k: int = 100,
                         remove_detected: bool = True) -> DailyCardPrecision:
    """The book's card precision@k, day by day, removing cards detected on earlier days."""
    # A card's score on a day is its highest transaction score, its label the highest label.
    per_card = (pl.DataFrame({"day": day.astype("datetime64[D]"), "card": card, "y": y.astype(np.int64),
                              "score": score.astype(np.float64)})
                .group_by("day", "card").agg(pl.col("score").max(), pl.col("y").max())
                .sort("day"))
    detected = pl.Series("card", [], dtype=per_card.schema["card"])
    days, precisions, compromised = [], [], []
    for (d,), cards in per_card.partition_by("day", as_dict=True, maintain_order=True).items():
        if remove_detected and len(detected):
            cards = cards.filter(~pl.col("card").is_in(detected))
        # Highest score first; ties by card id (deterministic).
        top = cards.sort(["score", "card"], descending=[True, False]).head(k)
        hits = top.filter(pl.col("y") == 1)["card"]
        days.append(str(np.datetime64(d, "D")))
        precisions.append(len(hits) / k)
        compromised.append(int(cards["y"].sum()))
        if remove_detected:
            detected = pl.concat([detected, hits])
    return DailyCardPrecision(days, precisions, compromised)


def threshold_for_budget(valid_scores: np.ndarray, alert_rate: float) -> float:
    """Score threshold that alerts on ``alert_rate`` of the transactions (chosen on validation data)."""
    if len(valid_scores) == 0:
        return 0.5
    return float(np.quantile(valid_scores, 1.0 - alert_rate))


def alert_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    alerts = score >= threshold
    tp = int((alerts & (y == 1)).sum())
    return {
        "threshold": float(threshold),
        "alerts": float(alerts.sum()),
        "precision": tp / alerts.sum() if alerts.sum() else 0.0,
        "recall": tp / (y == 1).sum() if (y == 1).sum() else 0.0,
    }


def calibration_bins(y: np.ndarray, score: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted score vs observed fraud rate per score bin (uniform bins on [0, 1])."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(score, edges[1:-1]), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": float(m.sum()),
                        "mean_score": float(score[m].mean()), "fraud_rate": float(y[m].mean())})
    return out


def evaluate(data: EvalData, k: int = 100, threshold: float | None = None,
             remove_known_compromised: bool = True) -> Metrics:
    """All metrics of the book's protocol on one test window (see the module docstring)."""
    removed = 0
    if remove_known_compromised and data.known_card is not None:
        out = known_compromised_mask(data)
        removed = int(out.sum())
        data = EvalData(data.day[~out], data.card[~out], data.y[~out], data.score[~out])
    y, s = data.y.astype(np.int64), data.score.astype(np.float64)
    both = 0 < y.sum() < len(y)
    daily = card_precision_top_k(data.day, data.card, y, s, k)
    return Metrics(
        auc_roc=float(roc_auc_score(y, s)) if both else float("nan"),
        average_precision=float(average_precision_score(y, s)) if both else float("nan"),
        card_precision_at_k=daily.mean,
        k=k,
        daily=daily,
        n_transactions=len(y),
        n_frauds=int(y.sum()),
        removed_known_compromised=removed,
        alert=alert_metrics(y, s, threshold) if threshold is not None else {},
        calibration=calibration_bins(y, s),
    )
