"""`make drift-demo`: the drift -> check -> retrain -> gate loop on a simulation with injected drift.

Two simulations (600 cards, 110 days; drift from day 80 in one, none in the other) are each landed and
featurised through the real Dagster assets (ingest + dbt) in their own data directory, then replayed day by
day exactly as production would see them:

- day d is scored by the serving champion, the frozen first champion and River (prequential, learning each
  label at its label_time; its ADWIN drift events feed the stream check);
- the label-free checks (feature drift, score drift) run on day d, the quality check on day d - delay (its
  labels are known by the end of day d) -- the same ``ml.monitoring`` code the Dagster assets run;
- when a check fails, retraining runs for partition d + 1 (labels known then) with the training stage's
  functions and passes the registry's champion gate; a promoted model serves from day d + 1. A retrain
  after an alarm weights rows by recency (half-life ``--retrain-half-life`` days) and validates/gates on the
  last ``--retrain-valid-days`` labelled days, so the first labels of the new behaviour count.

Output: ``<data>/drift_demo/report.md`` + ``drift.png`` (per day AP of the three models, flag and retrain
days) and ``benchmarks/results/drift.json`` (``days_to_flag``, ``days_to_recover``, ``false_alarms_per_30d``).
Run: ``python -m benchmarks.drift_loop`` (``--customers/--days/--drift-day`` to resize).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ml.settings import PROJECT_ROOT

START = "2018-04-01"
RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "drift.json"


def _scenario_env(base: Path, name: str, args: argparse.Namespace) -> dict[str, str]:
    data = base / name
    end = (pd.Timestamp(START) + pd.Timedelta(days=args.days)).strftime("%Y-%m-%d")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    env.update(
        {
            "FRAUD_DATA_DIR": str(data),
            "FRAUD_WAREHOUSE": str(data / "warehouse.duckdb"),
            "BENTOML_HOME": str(data / "bentoml"),
            "DAGSTER_HOME": str(data / "dagster_home"),
            "FRAUD_SOURCE": "simulator",
            "FRAUD_START_DATE": START,
            "FRAUD_END_DATE": end,
            "FRAUD_SIM_CUSTOMERS": str(args.customers),
            "FRAUD_SIM_TERMINALS": str(2 * args.customers),
            "FRAUD_SIM_DAYS": str(args.days),
            "FRAUD_SIM_SEED": str(args.seed),
        }
    )
    if name == "drift":
        env["FRAUD_SIM_DRIFT_START_DAY"] = str(args.drift_day)
    (data / "dagster_home").mkdir(parents=True, exist_ok=True)
    return env


# --------------------------------------------------------------------------------------------- scenario


def run_scenario(out: Path, first_day: int, train_days: int, valid_days: int, save_reports: bool,
                 half_life: float | None = None, retrain_valid_days: int | None = None) -> None:
    """Inside a subprocess whose environment selects the scenario (settings are read at import)."""
    import dagster as dg
    import duckdb

    from ml import registry
    from ml.monitoring.daily import Reference, champion_from_model, drift_day, quality_day
    from ml.monitoring.decisions import decide
    from ml.monitoring.thresholds import DriftThresholds
    from ml.settings import get_settings
    from ml.training.train import XGBParams, fit, model_metadata
    from ml.training.training_set import SplitLengths, build, load_frame
    from orchestration.checks.feature_parity import online_parity_memory, online_parity_redis
    from orchestration.demo import materialize
    from orchestration.partitions import daily_partitions
    from orchestration.resources import prepare_dbt_project

    settings = get_settings()
    keys = daily_partitions.get_partition_keys()
    t0 = time.perf_counter()
    prepare_dbt_project()
    assert materialize("raw_transactions", partition_range=(keys[0], keys[-1])).success
    # The loop needs the features only: not the online-parity replay on them.
    parity = dg.AssetSelection.checks(online_parity_memory, online_parity_redis)
    assert materialize(dg.AssetSelection.groups("features") - parity).success
    print(f"[{settings.data_dir.name}] warehouse built in {time.perf_counter() - t0:.0f}s", flush=True)
    con = duckdb.connect(str(settings.warehouse), read_only=True)
    t = DriftThresholds.from_env()
    cfg = SplitLengths(train_days=train_days, valid_days=valid_days)
    delay = settings.label_delay_days
    days = [pd.Timestamp(k) for k in keys]

    def train_and_gate(day: pd.Timestamp, reason: str) -> dict:
        from sklearn.metrics import average_precision_score, roc_auc_score

        # After an alarm, validate (and gate) on the latest labelled days only: a week-long validation
        # window is still mostly the old behaviour, where the champion looks fine.
        after_alarm = reason != "initial champion"
        win = cfg
        if after_alarm and retrain_valid_days:
            win = SplitLengths(train_days=train_days + valid_days - retrain_valid_days,
                               valid_days=retrain_valid_days)
        data = build(con, day.to_pydatetime(), win)
        # Seconds, not minutes, per retrain. A retrain after an alarm weights recent rows up (half-life in
        # days): the first labelled days of the new behaviour are few against weeks of the old.
        recent = half_life if after_alarm else None
        res = fit(data, XGBParams(n_rounds=100, early_stopping_rounds=20, recency_half_life_days=recent))
        tag = registry.save_candidate(res.booster, model_metadata(data, res, {"trigger": reason}))
        current = registry.champion()
        champ_metrics = None
        if current is not None:  # champion scored on the challenger's (out-of-sample) validation window
            cur = champion_from_model(current)
            valid = load_frame(
                con, *data.windows.valid, feature_names=cur.feature_names, labels_known_at=data.windows.day
            )
            p = cur.booster.predict(
                __import__("xgboost").DMatrix(valid.X, feature_names=list(cur.feature_names))
            )
            champ_metrics = {
                "average_precision": float(average_precision_score(valid.y, p)),
                "auc_roc": float(roc_auc_score(valid.y, p)),
            }
        challenger = {
            "average_precision": res.valid_metrics["valid_average_precision"],
            "auc_roc": res.valid_metrics["valid_auc_roc"],
        }
        d = registry.gate(
            tag,
            challenger,
            champ_metrics,
            evaluation_window={"start": str(data.windows.valid[0]), "end": str(data.windows.valid[1])},
        )
        return {"day": f"{day:%Y-%m-%d}", "tag": tag, "promoted": d.promoted, "reason": d.reason}

    # Initial champion: trained when its whole window is past the 30-day feature warm-up.
    retrains = [train_and_gate(days[first_day], "initial champion")]
    champ = frozen = champion_from_model(registry.champion())
    ref = Reference(con, champ, t)
    river_scores, river_events = _river(
        con, settings, days[max(0, first_day - train_days - valid_days - 7)], days[-1] + pd.Timedelta(days=1)
    )
    rows = []
    for d in days[first_day:]:
        key = f"{d:%Y-%m-%d}"
        rep = drift_day(con, champ, ref, key, t, settings, river_events.get(key, []), save=save_reports)
        q, qsig, _ = quality_day(
            con,
            champ,
            f"{d - pd.Timedelta(days=delay):%Y-%m-%d}",
            t,
            known_at=(d + pd.Timedelta(days=1)).to_pydatetime(),
            settings=settings,
            save=save_reports,
        )
        decision = decide(key, [*rep.signals, qsig])
        # Ground truth for the plot: every model's AP on day d with all of its labels.
        day_rows = load_frame(
            con,
            d.to_pydatetime(),
            (d + pd.Timedelta(days=1)).to_pydatetime(),
            feature_names=champ.feature_names,
        )
        row = {
            "day": key,
            "champion_tag": champ.tag,
            "decision": decision.to_dict(),
            "label_free_flag": decision.label_free_flag,
            "retrain": decision.retrain,
            "ap_champion": _ap(day_rows.y, _predict(champ, day_rows)),
            "ap_frozen": _ap(day_rows.y, _predict(frozen, day_rows)),
            "ap_river": _ap(
                day_rows.y, np.array([river_scores.get(i, np.nan) for i in day_rows.transaction_id])
            ),
            "frauds": int(day_rows.y.sum()),
            "rows": len(day_rows),
            "card_testing_frauds": int(
                con.execute(
                    "select count(*) from raw.transactions where tx_fraud_scenario = 4 and tx_datetime >= ? "
                    "and tx_datetime < ?",
                    [d.to_pydatetime(), (d + pd.Timedelta(days=1)).to_pydatetime()],
                ).fetchone()[0]
            ),
        }
        rows.append(row)
        nxt = d + pd.Timedelta(days=1)
        if decision.retrain and nxt <= days[-1]:
            r = train_and_gate(nxt, "; ".join(decision.reasons))
            retrains.append(r)
            row["retrain_result"] = r
            if r["promoted"]:
                champ = champion_from_model(registry.champion())
                ref = Reference(con, champ, t)
        print(
            f"[{settings.data_dir.name}] {key} AP champ={row['ap_champion']:.3f} "
            f"frozen={row['ap_frozen']:.3f} "
            f"river={row['ap_river']:.3f} flag={decision.label_free_flag} retrain={decision.retrain} "
            + ("" if not decision.retrain else "| " + " | ".join(decision.reasons)),
            flush=True,
        )
    out.write_text(json.dumps({"days": rows, "retrains": retrains, "thresholds": t.__dict__}, default=str))


def _predict(champ, frame) -> np.ndarray:  # noqa: ANN001 - Champion, Frame
    import xgboost as xgb

    return champ.booster.predict(xgb.DMatrix(frame.X, feature_names=list(frame.feature_names)))


def _ap(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    ok = ~np.isnan(p)
    y, p = np.asarray(y)[ok], np.asarray(p)[ok]
    return float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _river(con, settings, start: pd.Timestamp, end: pd.Timestamp) -> tuple[dict, dict]:  # noqa: ANN001
    """River's delayed progressive validation of the streaming stage's OnlineModel over the warehouse's
    feature rows. Returns scores by transaction id and drift events by day."""
    from benchmarks.adaptation import prequential
    from ml.features.spec import FEATURE_NAMES, FEATURES_TABLE
    from ml.online.river_model import make_model

    cols = ", ".join(f'"{c}"' for c in FEATURE_NAMES)
    df = con.execute(
        f"select transaction_id, tx_datetime, label_time, tx_fraud, {cols} "
        f"from {FEATURES_TABLE} where tx_datetime >= ? and tx_datetime < ? "
        "order by tx_datetime, transaction_id",
        [start.to_pydatetime(), end.to_pydatetime()],
    ).df()
    X = df[list(FEATURE_NAMES)].to_numpy("float64").tolist()
    xs = [dict(zip(FEATURE_NAMES, row, strict=True)) for row in X]
    run = prequential(make_model(), xs, df["tx_datetime"].to_numpy("datetime64[us]").astype("int64"),
                      df["label_time"].to_numpy("datetime64[us]").astype("int64"), df["tx_fraud"].to_numpy(),
                      range(len(df)))
    events: dict[str, list[dict]] = {}
    for e in run.events:
        events.setdefault(f"{pd.Timestamp(e.time):%Y-%m-%d}", []).append(e.model_dump(mode="json"))
    return dict(zip(df["transaction_id"].astype(str), run.scores, strict=True)), events


# --------------------------------------------------------------------------------------------- summary


def summarise(drift: dict, stable: dict, drift_day: int, delay: float) -> dict:
    dd = pd.DataFrame(drift["days"]).set_index("day")
    sd = pd.DataFrame(stable["days"]).set_index("day")
    onset = pd.Timestamp(START) + pd.Timedelta(days=drift_day)
    pre = dd[pd.to_datetime(dd.index) < onset]
    post = dd[pd.to_datetime(dd.index) >= onset]
    flagged = post[post["label_free_flag"]]
    first_flag = pd.Timestamp(flagged.index[0]) if len(flagged) else None
    # Level to recover to: the serving champion's mean daily AP before the drift; recovered on the first day
    # d from which the mean AP of d, d+1, d+2 is back there (one day alone is too noisy; a forward window
    # dates the recovery to the day it happens, a trailing one would date it two days late).
    level = float(pre["ap_champion"].mean())
    first_labels = onset + pd.Timedelta(days=delay)
    roll = dd["ap_champion"][::-1].rolling(3, min_periods=3).mean()[::-1]
    after = roll[(pd.to_datetime(roll.index) >= first_labels) & (roll >= level)]
    recovered = pd.Timestamp(after.index[0]) if len(after) else None
    n_alarms = int(sd["label_free_flag"].sum() + 0)
    n_alarms_any = int(sd["retrain"].sum())
    return {
        "days_to_flag": None if first_flag is None else int((first_flag - onset).days),
        "days_to_recover": None if recovered is None else int((recovered - first_labels).days),
        "false_alarms_per_30d": round(n_alarms_any * 30 / len(sd), 3),
        "false_label_free_flags_per_30d": round(n_alarms * 30 / len(sd), 3),
        "stable_days_monitored": len(sd),
        "drift_onset": f"{onset:%Y-%m-%d}",
        "first_flag": None if first_flag is None else f"{first_flag:%Y-%m-%d}",
        "first_labels_of_new_pattern": f"{first_labels:%Y-%m-%d}",
        "recovered_on": None if recovered is None else f"{recovered:%Y-%m-%d}",
        "pre_drift_ap_level": round(level, 4),
        "retrain_days": [r["day"] for r in drift["retrains"][1:]],
        "promoted_days": [r["day"] for r in drift["retrains"][1:] if r["promoted"]],
        "mean_ap_post_drift": {
            m: round(float(post[f"ap_{m}"].mean()), 4) for m in ("frozen", "river", "champion")
        },
        "mean_ap_pre_drift": {
            m: round(float(pre[f"ap_{m}"].mean()), 4) for m in ("frozen", "river", "champion")
        },
        "stable_alarm_days": list(sd.index[sd["retrain"]]),
    }


def plot(drift: dict, summary: dict, path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ml.plots import to_png

    dd = pd.DataFrame(drift["days"])
    x = pd.to_datetime(dd["day"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for col, label in (
        ("ap_frozen", "frozen champion"),
        ("ap_river", "River (online)"),
        ("ap_champion", "serving champion (retrained on alarms)"),
    ):
        ax.plot(x, dd[col], marker=".", label=label)
    ax.axvline(pd.Timestamp(summary["drift_onset"]), color="red", ls="--", label="drift onset")
    ax.axvline(
        pd.Timestamp(summary["first_labels_of_new_pattern"]),
        color="grey",
        ls=":",
        label="first labels of drift",
    )
    if summary["first_flag"]:
        ax.axvline(
            pd.Timestamp(summary["first_flag"]), color="orange", lw=2, alpha=0.6, label="drift flagged"
        )
    for i, d in enumerate(summary["promoted_days"]):
        ax.axvline(
            pd.Timestamp(d), color="green", alpha=0.15, lw=3, label="retrained + promoted" if i == 0 else None
        )
    ax.axhline(summary["pre_drift_ap_level"], color="black", lw=0.8, alpha=0.5, label="pre-drift AP level")
    ax.set_ylabel("average precision (day)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower left", fontsize=8, ncol=2)
    ax.set_title("Drift loop: daily average precision")
    fig.tight_layout()
    png = to_png(fig)
    path.write_bytes(png)
    plt.close(fig)
    return png


def write_report(folder: Path, summary: dict, drift: dict) -> Path:
    lines = [
        "# Drift demo",
        "",
        f"Drift onset {summary['drift_onset']}; "
        f"first labels of the new pattern {summary['first_labels_of_new_pattern']}.",
        "",
        "![daily AP](drift.png)",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| days to flag (label-free signals) | {summary['days_to_flag']} | <= 1 |",
        f"| days to recover (from first labels) | {summary['days_to_recover']} | <= 3 |",
        f"| false alarms per 30 days (stable simulation) | {summary['false_alarms_per_30d']} | <= 1 |",
        "",
        f"Pre-drift AP level {summary['pre_drift_ap_level']}; "
        f"mean AP after onset: {summary['mean_ap_post_drift']}.",
        f"Retraining ran on {', '.join(summary['retrain_days']) or 'no day'}; "
        f"promoted on {', '.join(summary['promoted_days']) or 'no day'}.",
        "",
        "## Decisions",
        "",
        "| day | flag | retrain | reasons |",
        "|---|---|---|---|",
    ]
    for r in drift["days"]:
        if r["retrain"]:
            lines.append(
                f"| {r['day']} | {r['label_free_flag']} | {r.get('retrain_result', {}).get('promoted', '')} "
                f"| {'; '.join(r['decision']['reasons'])} |"
            )
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=600)
    p.add_argument("--days", type=int, default=110)
    p.add_argument("--drift-day", type=int, default=80)
    p.add_argument("--first-day", type=int, default=65, help="day of the first champion (after warm-up)")
    p.add_argument("--train-days", type=int, default=14)
    p.add_argument("--valid-days", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain-valid-days", type=int, default=2,
                   help="validation (and gate) window of retrains after an alarm, in days")
    p.add_argument("--retrain-half-life", type=float, default=2.0,
                   help="recency half-life (days) of retrains after an alarm; 0 = unweighted")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--scenario", choices=["drift", "stable"], help=argparse.SUPPRESS)
    p.add_argument("--scenario-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scenario:
        run_scenario(
            args.scenario_out,
            args.first_day,
            args.train_days,
            args.valid_days,
            save_reports=args.scenario == "drift",
            half_life=args.retrain_half_life or None,
            retrain_valid_days=args.retrain_valid_days,
        )
        return {}
    from ml.settings import get_settings

    base = args.out or get_settings().data_dir / "drift_demo"
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    for name in ("drift", "stable"):
        out = base / f"{name}.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.drift_loop",
            *(sys.argv[1:] if argv is None else argv),  # bench_drift passes [] (not its own argv)
            "--scenario",
            name,
            "--scenario-out",
            str(out),
        ]
        subprocess.run(cmd, env=_scenario_env(base, name, args), check=True, cwd=PROJECT_ROOT)
        results[name] = json.loads(out.read_text())
    summary = summarise(results["drift"], results["stable"], args.drift_day, get_settings().label_delay_days)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["config"] = {k: v for k, v in vars(args).items() if k not in ("scenario", "scenario_out", "out")}
    plot(results["drift"], summary, base / "drift.png")
    report = write_report(base, summary, results["drift"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(
        json.dumps(
            {k: summary[k] for k in ("days_to_flag", "days_to_recover", "false_alarms_per_30d", "wall_s")}
        )
    )
    print(
        f"report: {report}\nresults: {RESULTS}\n"
        f"Evidently: evidently ui --workspace {base / 'drift' / 'evidently'}"
    )
    return summary


if __name__ == "__main__":
    main()
