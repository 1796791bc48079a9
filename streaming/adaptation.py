"""How fast each model adapts to drift: River (learning from delayed labels) against the frozen champion.

``adaptation_report`` replays a transaction table (a simulation with ``drift_start_day`` set) through the
stream worker (in-process store), keeps every score, and computes each model's daily average precision.
Recovery is counted from the day the first labels of the new pattern are known (the onset plus the label
delay): the first day from then on whose AP (3-day rolling mean) is back to ``recover_share`` of the
model's pre-drift level (mean of the ``baseline_days`` before the onset).
"""

from __future__ import annotations

import dataclasses
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def train_champion(df: pd.DataFrame, settings, until: pd.Timestamp, rounds: int = 80):
    """A frozen XGBoost trained on the online features (and known labels) of transactions before ``until``.

    Stands in for the registry's champion when none is given, trained on the same features the worker uses.
    """
    import xgboost as xgb

    from ml.features.spec import FEATURE_NAMES
    from streaming.sources import ReplaySource
    from streaming.worker import Champion, Sink, Worker, build_store

    head = df[pd.to_datetime(df["tx_datetime"]) < until]
    w = Worker(ReplaySource(head), Sink(), build_store(settings), settings, restore=False,
               checkpoint_dir=settings.data_dir / "champion-warmup", checkpoint_every=10**9,
               checkpoint_interval_s=1e9, pending_ttl=timedelta(days=10**4))
    w.run()
    fraud = dict(zip(head["transaction_id"].astype(str), head["tx_fraud"].astype(int), strict=True))
    X = np.array([rec[1] for rec in w.pending.values()], dtype=np.float32)
    y = np.array([fraud[t] for t in w.pending])
    params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.1, "nthread": 1,
              "scale_pos_weight": 1.0}
    booster = xgb.train(params, xgb.DMatrix(X, label=y, feature_names=list(FEATURE_NAMES)), rounds)
    return Champion(booster, list(FEATURE_NAMES), 0.5, f"frozen-until-{until:%Y-%m-%d}")


def _ap(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _recovery(daily: pd.Series, baseline: float, known_day: pd.Timestamp, share: float) -> int | None:
    rolled = daily.rolling(3, min_periods=1).mean()
    after = rolled[rolled.index >= known_day]
    ok = after[after >= share * baseline]
    return None if ok.empty else int((ok.index[0] - known_day).days)


def adaptation_report(df: pd.DataFrame, drift_start: str | pd.Timestamp, champion=None, settings=None,
                      model_name: str | None = None, label_delay: timedelta | None = None,
                      baseline_days: int = 7, recover_share: float = 0.9,
                      plot_path: Path | None = None) -> dict[str, Any]:
    """Daily AP of River vs the frozen champion around a drift onset, and days to recover (see module doc)."""
    from ml.settings import get_settings
    from streaming.river_model import make_model
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker, build_store

    onset = pd.Timestamp(drift_start).normalize()
    base = settings or get_settings()
    settings = dataclasses.replace(base, data_dir=Path(tempfile.mkdtemp(prefix="adaptation-")),
                                   online_store="memory")
    if champion is None:
        champion = train_champion(df, settings, onset)
    sink = Sink(keep_scores=True)
    w = Worker(ReplaySource(df), sink, build_store(settings), settings, champion=champion,
               model=make_model(model_name) if model_name else None, restore=False,
               checkpoint_dir=settings.data_dir / "ckpt", checkpoint_every=10**9, checkpoint_interval_s=1e9)
    w.run()
    scores = pd.DataFrame(sink.scores).drop_duplicates("transaction_id")
    truth = df[["transaction_id", "tx_fraud", "label_time"] + (
        ["tx_fraud_scenario"] if "tx_fraud_scenario" in df.columns else [])].copy()
    truth["transaction_id"] = truth["transaction_id"].astype(str)
    m = scores.merge(truth, on="transaction_id")
    m["day"] = pd.to_datetime(m["tx_datetime"]).dt.normalize()
    rows = []
    for day, g in m.groupby("day"):
        y = g["tx_fraud"].to_numpy()
        rows.append({"day": day, "transactions": len(g), "frauds": int(y.sum()),
                     "river_ap": _ap(y, g["river_score"].to_numpy()),
                     "xgb_ap": _ap(y, g["xgb_score"].to_numpy(dtype=float))})
    daily = pd.DataFrame(rows).set_index("day")
    # First labels of the new pattern: the earliest label_time of a drift-scenario fraud, else onset + delay.
    if "tx_fraud_scenario" in truth.columns and (truth["tx_fraud_scenario"] == 4).any():
        known = pd.Timestamp(truth.loc[truth["tx_fraud_scenario"] == 4, "label_time"].min()).normalize()
    else:
        known = onset + (label_delay or timedelta(days=base.label_delay_days))
    before = daily[(daily.index < onset) & (daily.index >= onset - pd.Timedelta(days=baseline_days))]
    out: dict[str, Any] = {"drift_onset": str(onset.date()), "first_labels_known": str(known.date()),
                           "river_model": w.model.name, "champion": champion.tag,
                           "recover_share": recover_share}
    for col, name in (("river_ap", "river"), ("xgb_ap", "xgboost")):
        baseline = float(before[col].mean())
        out[f"{name}_baseline_ap"] = round(baseline, 4)
        out[f"{name}_mean_ap_after_onset"] = round(float(daily.loc[daily.index >= onset, col].mean()), 4)
        out[f"{name}_days_to_recover"] = _recovery(daily[col], baseline, known, recover_share)
    out["drift_events"] = w.stats.drift_events
    out["daily"] = [{"day": str(d.date()), **{k: (None if isinstance(v, float) and np.isnan(v) else v)
                                              for k, v in r.items()}} for d, r in daily.iterrows()]
    if plot_path is not None:
        plot_adaptation(daily, onset, known, plot_path)
        out["plot"] = str(plot_path)
    return out


def plot_adaptation(daily: pd.DataFrame, onset: pd.Timestamp, known: pd.Timestamp, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(daily.index, daily["xgb_ap"].rolling(3, min_periods=1).mean(), label="XGBoost champion (frozen)")
    ax.plot(daily.index, daily["river_ap"].rolling(3, min_periods=1).mean(), label="River (online)")
    ax.axvline(onset, color="red", ls="--", lw=1, label="drift onset")
    ax.axvline(known, color="gray", ls=":", lw=1, label="first new-pattern labels known")
    ax.set_ylabel("daily average precision (3-day mean)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
