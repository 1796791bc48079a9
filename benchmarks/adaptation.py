"""How fast each model adapts to drift: River models (learning from delayed labels) vs the frozen champion.

``adaptation_report`` replays a transaction table (a simulation with ``drift_start_day`` set) once through the
stream worker (in-process store) to get every transaction's online features and the default River model's
scores. A stand-in champion (XGBoost, the production hyper-parameters) is trained on the labels known at the
onset and then frozen. Every River candidate then goes through River's delayed progressive validation
(``river.evaluate``) on the same feature vectors: scored at transaction time, learnt at ``label_time``, in the
worker's order of transactions. The default model's scores are checked to equal the worker's own, so the
candidates are compared on exactly the stream the worker sees.

Per model: daily average precision, its pre-drift level (mean of the ``baseline_days`` days before the onset),
and the days it takes to recover, counted from the day the first labels of the new pattern are known (no
learner can react before): the first day from then on whose 3-day mean AP is back to ``recover_share`` of the
pre-drift level. Also: the prequential AP and log loss over the whole stream, the drift events each model's
error stream raised (ADWIN), and the cost of a predict + learn.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from river import base, evaluate, metrics

from ml.events import DriftEvent
from ml.features.per_transaction import from_us
from ml.online.river_model import OnlineModel

SCENARIO_NEW = 4  # the simulator's card-testing pattern (the drift's new fraud pattern)


def train_champion(X: np.ndarray, y: np.ndarray, known: np.ndarray, tag: str):
    """A frozen XGBoost (production hyper-parameters, early-stopped on the last fifth) on rows ``known``."""
    import xgboost as xgb

    from ml.champion import Champion
    from ml.features.spec import FEATURE_NAMES
    from ml.training.train import XGBParams, booster_params

    idx = np.flatnonzero(known)
    cut = idx[int(len(idx) * 0.8)]
    tr, va = idx[idx < cut], idx[idx >= cut]
    params = XGBParams()
    names = list(FEATURE_NAMES)
    dtrain = xgb.DMatrix(X[tr], label=y[tr], feature_names=names)
    dvalid = xgb.DMatrix(X[va], label=y[va], feature_names=names)
    bp = booster_params(params, y[tr]) | {"nthread": 1}
    booster = xgb.train(bp, dtrain, params.n_rounds, evals=[(dvalid, "valid")],
                        early_stopping_rounds=params.early_stopping_rounds, verbose_eval=False)
    n_trees = booster.best_iteration + 1
    booster = xgb.train(bp, xgb.DMatrix(X[idx], label=y[idx], feature_names=names), n_trees)  # refit
    return Champion(f"{tag} ({n_trees} trees)", booster, tuple(names), 0.5)


def _ap(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _recovery(daily: pd.Series, baseline: float, known_day: pd.Timestamp, share: float) -> int | None:
    rolled = daily.rolling(3, min_periods=1).mean()
    after = rolled[rolled.index >= known_day]
    ok = after[after >= share * baseline]
    return None if ok.empty else int((ok.index[0] - known_day).days)


NEVER = 2**62  # the delay of a row without a label: River answers it after the stream ends


@dataclass
class Prequential:
    scores: np.ndarray  # the model's score of each row at its transaction time (nan: not scored)
    events: list[DriftEvent]  # what its error detectors raised
    seconds: float  # spent in the model's predict + learn
    log_loss: float  # River's prequential log loss


class _Replayed(base.Classifier):
    """An ``OnlineModel`` as River's progressive validation sees it: an observation is a row number (and its
    times); the model scores and learns that row's feature vector, and its error detectors get the score it
    gave at transaction time, as in the worker."""

    def __init__(self, model: OnlineModel, xs: Sequence[dict | None], label_us: np.ndarray,
                 px: np.ndarray | None):
        self.model, self.xs, self.label_us, self.px = model, xs, label_us, px
        self.scores = np.full(len(xs), np.nan)
        self.events: list[DriftEvent] = []
        self.seconds = 0.0

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        r = x["row"]
        t0 = time.perf_counter()
        p = self.model.predict(self.xs[r])
        self.seconds += time.perf_counter() - t0
        self.scores[r] = p
        return {False: 1.0 - p, True: p}

    def learn_one(self, x: dict, y: bool) -> None:
        r = x["row"]
        if x["delay"] == NEVER:
            return
        t0 = time.perf_counter()
        self.events += self.model.learn(self.xs[r], int(y), from_us(int(self.label_us[r])), self.scores[r],
                                        None if self.px is None else float(self.px[r]))
        self.seconds += time.perf_counter() - t0


def prequential(model: OnlineModel, xs: Sequence[dict | None], tx_us: np.ndarray, label_us: np.ndarray,
                y: np.ndarray, order: Iterable[int], px: np.ndarray | None = None) -> Prequential:
    """River's delayed progressive validation of ``model``: rows arrive in ``order`` at their transaction
    time (µs), each is scored, then learnt at its label time, labels due by a transaction learnt before it.

    ``xs[r]`` None: a row the worker dead-lettered (skipped). ``px``: the frozen champion's scores, for the
    error detector that watches it.
    """
    labelled = ~np.isnat(label_us.view("datetime64[us]"))

    def stream() -> Iterator[tuple[dict, bool]]:
        for r in order:
            if xs[r] is not None:
                t = int(tx_us[r])
                yield {"row": r, "at": t, "delay": int(label_us[r]) - t if labelled[r] else NEVER}, bool(y[r])

    replayed = _Replayed(model, xs, label_us, px)
    metric = evaluate.progressive_val_score(stream(), replayed, metrics.LogLoss(), moment="at", delay="delay")
    return Prequential(replayed.scores, replayed.events, replayed.seconds, float(metric.get()))


def adaptation_report(df: pd.DataFrame, drift_start: str | pd.Timestamp, settings=None,
                      candidates: list[str] | None = None,
                      extra: dict[str, tuple[Any, float]] | None = None, label_delay: timedelta | None = None,
                      baseline_days: int = 7, recover_share: float = 0.9,
                      plot_path: Path | None = None) -> dict[str, Any]:
    """Daily AP of the River candidates vs the frozen champion around a drift onset (see module doc).

    ``extra``: more models to run, name -> (factory, fraud weight), e.g. a hyper-parameter sweep.
    """
    from ml.features.spec import FEATURE_NAMES
    from ml.online.factory import make_store
    from ml.online.river_model import CANDIDATES, DEFAULT_MODEL
    from ml.settings import get_settings
    from streaming.sources import ReplaySource, Timeline
    from streaming.worker import Sink, Worker

    onset = pd.Timestamp(drift_start).normalize()
    base = settings or get_settings()
    settings = base.model_copy(update={"data_dir": Path(tempfile.mkdtemp(prefix="adaptation-")),
                                       "online_store": "memory"})
    candidates = candidates or list(CANDIDATES)
    if DEFAULT_MODEL not in candidates:
        candidates = [DEFAULT_MODEL, *candidates]

    # 1. One worker run: online features of every transaction, and the default River model's scores.
    timeline = Timeline(df)
    sink = Sink(keep_scores=True)
    w = Worker(ReplaySource(timeline), sink, make_store(settings), settings, restore=False,
               checkpoint_dir=settings.data_dir / "ckpt", checkpoint_every=10**9, checkpoint_interval_s=1e9,
               pending_ttl=timedelta(days=10**4))
    t0 = time.perf_counter()
    w.run()
    worker_s = time.perf_counter() - t0
    ids, X = w.pending_vectors()
    row_of = {tid: i for i, tid in enumerate(timeline.ids.tolist())}
    n = len(df)
    xs: list = [None] * n
    Xfull = np.full((n, len(FEATURE_NAMES)), np.nan)
    for tid, vec in zip(ids, X.tolist(), strict=True):
        r = row_of[tid]
        xs[r] = dict(zip(FEATURE_NAMES, vec, strict=True))
        Xfull[r] = vec
    y = df["tx_fraud"].to_numpy().astype(int)
    label_time = pd.to_datetime(df["label_time"]).to_numpy("datetime64[us]")
    tx_time = pd.to_datetime(df["tx_datetime"])
    day = tx_time.dt.normalize().to_numpy()

    # 2. The frozen champion: trained on what was labelled by the onset.
    has_x = ~np.isnan(Xfull[:, 0])
    known_at_onset = has_x & (label_time <= onset.to_datetime64())
    champion = train_champion(Xfull, y, known_at_onset, f"frozen at {onset:%Y-%m-%d}")
    px = np.full(n, np.nan)
    px[has_x] = champion.predict(Xfull[has_x])

    # 3. Every candidate on the worker's event order and vectors.
    scores: dict[str, np.ndarray] = {"xgboost": px}
    models: dict[str, dict[str, Any]] = {}
    specs = {name: CANDIDATES[name] for name in candidates} | (extra or {})
    tx_order = timeline.row[~timeline.kind]  # the worker's order of transactions
    tx_us, label_us = timeline.tx_time.astype("int64"), timeline.label_time.astype("int64")
    for name, spec in specs.items():
        run = prequential(OnlineModel(name, spec=spec), xs, tx_us, label_us, y, tx_order.tolist(), px)
        p = scores[name] = run.scores
        river_drifts = [e for e in run.events if e.stream == "river_error"]
        xgb_drifts = [e for e in run.events if e.stream == "xgb_error"]
        models[name] = {
            "prequential_ap": round(_ap(y[has_x], p[has_x]), 4),
            "prequential_log_loss": round(run.log_loss, 4),
            "us_per_predict_learn": round(run.seconds / max(1, int(has_x.sum())) * 1e6, 1),
            "drift_events": len(river_drifts),
            "first_drift_after_onset": next((str(e.time) for e in river_drifts
                                             if pd.Timestamp(e.time) >= onset), None),
        }
        if name == DEFAULT_MODEL:
            worker_p = {s["transaction_id"]: s["river_score"] for s in sink.scores}
            same = all(worker_p[tid] == p[row_of[tid]] for tid in ids)
            models[name]["equals_worker_scores"] = same
            champion_drifts = xgb_drifts
    models["xgboost"] = {"prequential_ap": round(_ap(y[has_x], px[has_x]), 4),
                         "drift_events": len(champion_drifts),
                         "first_drift_after_onset": next((str(e.time) for e in champion_drifts
                                                          if pd.Timestamp(e.time) >= onset), None)}

    # 4. Daily AP, pre-drift level, recovery.
    rows = []
    for d in np.unique(day[has_x]):
        m = has_x & (day == d)
        rows.append({"day": pd.Timestamp(d), "transactions": int(m.sum()), "frauds": int(y[m].sum()),
                     **{k: _ap(y[m], v[m]) for k, v in scores.items()}})
    daily = pd.DataFrame(rows).set_index("day")
    scen = df["tx_fraud_scenario"].to_numpy() if "tx_fraud_scenario" in df.columns else None
    if scen is not None and (scen == SCENARIO_NEW).any():
        known = pd.Timestamp(label_time[scen == SCENARIO_NEW].min()).normalize()
    else:
        known = onset + (label_delay or timedelta(days=base.label_delay_days))
    before = daily[(daily.index < onset) & (daily.index >= onset - pd.Timedelta(days=baseline_days))]
    after = daily[daily.index >= onset]
    for name in scores:
        baseline = float(before[name].mean())
        models[name] |= {
            "baseline_ap": round(baseline, 4),
            "mean_ap_after_onset": round(float(after[name].mean()), 4),
            "min_ap_3day_after_onset": round(float(after[name].rolling(3, min_periods=1).mean().min()), 4),
            "mean_ap_from_first_labels": round(float(daily.loc[daily.index >= known, name].mean()), 4),
            "days_to_recover": _recovery(daily[name], baseline, known, recover_share),
        }
    out: dict[str, Any] = {
        "drift_onset": str(onset.date()), "first_labels_known": str(known.date()),
        "days_observed_after_first_labels": int((daily.index.max() - known).days),
        "river_model": DEFAULT_MODEL, "champion": champion.tag, "recover_share": recover_share,
        "recovery_rule": f"first day from first_labels_known whose 3-day mean AP >= {recover_share} x the "
                         f"model's mean AP over the {baseline_days} days before the onset",
        "models": models, "worker_seconds": round(worker_s, 1),
        "daily": [{"day": str(d.date()), **{k: (None if isinstance(v, float) and np.isnan(v) else
                                                 round(v, 4) if isinstance(v, float) else v)
                                             for k, v in r.items()}} for d, r in daily.iterrows()],
    }
    if plot_path is not None:
        plot_adaptation(daily[["xgboost", *candidates]], onset, known, DEFAULT_MODEL, plot_path)
        out["plot"] = str(plot_path)
    return out


def plot_adaptation(daily: pd.DataFrame, onset: pd.Timestamp, known: pd.Timestamp, river: str,
                    path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for col in [c for c in daily.columns if c not in ("xgboost", river)]:
        ax.plot(daily.index, daily[col].rolling(3, min_periods=1).mean(), lw=0.8, alpha=0.5,
                label=f"River {col}")
    ax.plot(daily.index, daily["xgboost"].rolling(3, min_periods=1).mean(), lw=2.2, color="black",
            label="XGBoost champion (frozen at onset)")
    ax.plot(daily.index, daily[river].rolling(3, min_periods=1).mean(), lw=2.2, color="tab:red",
            label=f"River {river} (worker default)")
    ax.axvline(onset, color="red", ls="--", lw=1, label="drift onset")
    ax.axvline(known, color="gray", ls=":", lw=1.5, label="first labels of the new pattern")
    ax.set_ylabel("daily average precision (3-day mean)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower left", fontsize=7, ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
