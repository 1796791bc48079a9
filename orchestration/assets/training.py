"""Training stage: training_set -> xgb_model -> model_evaluation -> champion_gate, one partition per day D.

D is the day a model is trained (see ml.training.training_set for the windows): the training/validation rows
end at D - delay with labels known at D; the test window is [D, D + test_days). An honest evaluation needs the
test window's labels, known only at D + test_days + delay. So the daily schedule (``orchestration/schedules.py``),
run on day T, asks for two runs: training (training_set, xgb_model) for D = T, and evaluation + gate
(model_evaluation, champion_gate) for D = T - test_days - delay, the latest day whose test labels are all known.
A champion is therefore always a model that beat (or matched) the previous champion on data neither had seen.
On historical data (simulator, a user's file) every step of one partition can run at once:
``materialize("group:training", partition_key=D)`` (what `make demo` does, see ``demo_partition``).
"""

import json
from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ml.data.warehouse import features_connection
from ml.features.spec import FEATURES_TABLE
from ml.settings import get_settings
from ml.training.train import XGBParams
from ml.training.training_set import SplitLengths
from orchestration.assets import FEATURES_TABLE_KEY
from orchestration.partitions import daily_partitions

GROUP = "training"


class SplitConfig(dg.Config):
    """Run config of the fixed timestamp split (days); the defaults are ml.training.training_set.SplitLengths's."""

    train_days: int = SplitLengths.train_days
    valid_days: int = SplitLengths.valid_days
    test_days: int = SplitLengths.test_days

    def lengths(self) -> SplitLengths:
        return SplitLengths(self.train_days, self.valid_days, self.test_days)


class ModelConfig(dg.Config):
    """XGBoost hyperparameters; the defaults are ml.training.train.XGBParams's (one place to tune)."""

    max_depth: int = XGBParams.max_depth
    learning_rate: float = XGBParams.learning_rate
    n_rounds: int = XGBParams.n_rounds
    early_stopping_rounds: int = XGBParams.early_stopping_rounds
    min_child_weight: float = XGBParams.min_child_weight
    scale_pos_weight: float | None = XGBParams.scale_pos_weight
    subsample: float = XGBParams.subsample
    colsample_bytree: float = XGBParams.colsample_bytree
    nthread: int = XGBParams.nthread
    seed: int = XGBParams.seed
    refit_on_valid: bool = XGBParams.refit_on_valid
    alert_rate: float = XGBParams.alert_rate
    recency_half_life_days: float | None = XGBParams.recency_half_life_days


class EvaluationConfig(dg.Config):
    top_k: int = 100


class GateConfig(dg.Config):
    """Tolerance of the champion/challenger gate (absolute, on AP and AUC ROC; see ml.registry)."""

    tolerance: float = 0.01


def training_set_dir(day: str) -> Path:
    return get_settings().data_dir / "training_sets" / day


def _report_dir(day: str) -> Path:
    return get_settings().reports_dir / "training" / day


def split_lengths_of(manifest: dict) -> SplitLengths:
    return SplitLengths(**manifest["config"])


@dg.asset(
    group_name=GROUP, partitions_def=daily_partitions, deps=[FEATURES_TABLE_KEY], kinds={"duckdb", "parquet"},
    description="Point-in-time train/validation rows for training day D (labels known at D), as Parquet.",
)
def training_set(context: dg.AssetExecutionContext, config: SplitConfig,
                 duckdb: DuckDBResource) -> dg.MaterializeResult:
    from ml.training.training_set import read_parquet, windows_for, write_parquet

    day = context.partition_key
    cfg = config.lengths()
    path = training_set_dir(day) / "rows.parquet"
    with features_connection(duckdb.database) as con:
        write_parquet(con, day, cfg, path)
    data = read_parquet(path, day, cfg)
    for name, fr in (("training", data.train), ("validation", data.valid)):
        if len(fr) == 0 or fr.y.sum() == 0:
            raise dg.Failure(f"{name} window of {day} has no labelled rows or no fraud "
                             f"({windows_for(day, cfg).as_dict()}): choose a later day or longer windows")
    manifest = {"day": day, "config": {"train_days": cfg.train_days, "valid_days": cfg.valid_days,
                                       "test_days": cfg.test_days, "delay_days": cfg.resolved_delay()},
                "windows": data.windows.as_dict(), "data_fingerprint": data.fingerprint()}
    (path.parent / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "windows": dg.MetadataValue.json(manifest["windows"]),
        "train_rows": len(data.train), "train_frauds": int(data.train.y.sum()),
        "valid_rows": len(data.valid), "valid_frauds": int(data.valid.y.sum()),
        "data_fingerprint": manifest["data_fingerprint"],
        "max_label_time": str(max(data.train.label_time.max(), data.valid.label_time.max())),
    })


@dg.asset(
    group_name=GROUP, partitions_def=daily_partitions, deps=[training_set], kinds={"xgboost", "bentoml"},
    description="XGBoost fit on the training set of D, saved as a fraud-xgb version in the BentoML store.",
)
def xgb_model(context: dg.AssetExecutionContext, config: ModelConfig) -> dg.MaterializeResult:
    from ml import registry
    from ml.training.train import XGBParams, fit, model_metadata
    from ml.training.training_set import read_parquet

    day = context.partition_key
    manifest = json.loads((training_set_dir(day) / "manifest.json").read_text())
    data = read_parquet(training_set_dir(day) / "rows.parquet", day, split_lengths_of(manifest))
    params = XGBParams(**config.model_dump())
    result = fit(data, params)
    meta = model_metadata(data, result, extra={"dagster_run_id": context.run_id})
    tag = registry.save_candidate(result.booster, meta)
    gain = result.booster.get_score(importance_type="gain")
    top = sorted(gain.items(), key=lambda kv: -kv[1])[:10]
    table = "| feature | gain |\n|---|---|\n" + "\n".join(f"| {k} | {v:.1f} |" for k, v in top)
    context.log.info(f"saved {tag}: {result.n_trees} trees in {result.fit_s:.1f}s, {result.valid_metrics}")
    return dg.MaterializeResult(metadata={
        "tag": tag, "n_trees": result.n_trees, "fit_s": round(result.fit_s, 2),
        "threshold": result.threshold, "data_fingerprint": meta["data_fingerprint"],
        "spec_version": meta["spec_version"], **{k: float(v) for k, v in result.valid_metrics.items()},
        "feature_importance": dg.MetadataValue.md(table),
    })


def _model_of(context: dg.AssetExecutionContext, day: str):  # -> bentoml.Model
    """The model that xgb_model last materialized for D (its tag is in the materialization's metadata), so a
    later or concurrent fit of the same day, e.g. a drift-triggered retrain, is never evaluated by mistake.
    Falls back to the newest fraud-xgb labelled with D (a model saved outside Dagster)."""
    from ml import registry

    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=xgb_model.key, asset_partitions=[day]), limit=1).records
    if records:
        mat = records[0].asset_materialization
        if mat is not None and "tag" in mat.metadata:
            return registry.get(str(mat.metadata["tag"].value))
    return registry.candidate_for_partition(day)


def _evaluate(con, model, test_start, test_end, k: int):  # -> (Metrics, scores, TestWindow)
    from ml import registry
    from ml.training.evaluate import evaluate_booster, load_test_window

    names = list(model.info.metadata["feature_names"])
    window = load_test_window(con, test_start, test_end, names)
    threshold = model.info.metadata.get("threshold")
    metrics, scores = evaluate_booster(registry.load_booster(model), window, names,
                                       threshold=None if threshold is None else float(threshold), k=k)
    return metrics, scores, window


def _check_complete(con, test_end, delay_days: float) -> None:
    last = con.table(FEATURES_TABLE).aggregate("max(tx_datetime)").fetchall()[0][0]
    if last is None or last < test_end - timedelta(days=1):
        raise dg.Failure(f"test window ends {test_end} but the warehouse stops at {last}: evaluate this day "
                         f"once its test labels are known (D + test_days + {delay_days:g} days)")


@dg.asset(
    group_name=GROUP, partitions_def=daily_partitions, deps=[xgb_model], kinds={"duckdb"},
    description="The model of D on its test window [D, D + test_days): AUC ROC, AP, card precision@k "
                "(the book's protocol), alert-budget precision/recall, calibration; plots in metadata.",
)
def model_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig,
                     duckdb: DuckDBResource) -> dg.MaterializeResult:
    from ml import plots
    from ml.training.training_set import as_datetime

    day = context.partition_key
    model = _model_of(context, day)
    md = model.info.metadata
    test_start, test_end = as_datetime(md["test_start"]), as_datetime(md["test_end"])
    with features_connection(duckdb.database) as con:
        _check_complete(con, test_end, float(md["delay_days"]))
        metrics, scores, window = _evaluate(con, model, test_start, test_end, config.top_k)
    s = metrics.summary()
    keep = ~_removed_mask(window, scores)
    y, sc = window.frame.y[keep], scores[keep]
    pngs = {
        "roc.png": plots.roc_png(y, sc, str(model.tag), metrics.auc_roc),
        "pr.png": plots.pr_png(y, sc, str(model.tag), metrics.average_precision),
        "card_precision_daily.png": plots.daily_png(metrics.daily.days, metrics.daily.precision,
                                                    f"Card precision@{metrics.k}"),
        "calibration.png": plots.calibration_png(metrics.calibration),
    }
    out = _report_dir(day)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        (out / name).write_bytes(png)
    record = {"day": day, "model_tag": str(model.tag), "test_start": md["test_start"],
              "test_end": md["test_end"], "metrics": s,
              "daily_card_precision": dict(zip(metrics.daily.days, metrics.daily.precision, strict=True)),
              "removed_known_compromised": metrics.removed_known_compromised, "top_k": metrics.k,
              "calibration": metrics.calibration}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    report = "\n\n".join(plots.md_image(p, n) for n, p in pngs.items())
    return dg.MaterializeResult(metadata={
        "model_tag": str(model.tag),
        "test_window": f"[{md['test_start']}, {md['test_end']})",
        "auc_roc": s["auc_roc"], "average_precision": s["average_precision"],
        f"card_precision_at_{metrics.k}": s[f"card_precision_at_{metrics.k}"],
        "alert_precision": s.get("alert_precision", 0.0), "alert_recall": s.get("alert_recall", 0.0),
        "alerts": int(s.get("alert_alerts", 0)), "alert_threshold": s.get("alert_threshold", 0.0),
        "calibration": dg.MetadataValue.md(_calibration_table(metrics.calibration)),
        "test_transactions": metrics.n_transactions, "test_frauds": metrics.n_frauds,
        "removed_known_compromised": metrics.removed_known_compromised,
        "report_dir": dg.MetadataValue.path(str(out)),
        "plots": dg.MetadataValue.md(report),
    })


def _calibration_table(bins: list[dict[str, float]]) -> str:
    rows = [f"| {b['lo']:.1f}-{b['hi']:.1f} | {int(b['n']):,} | {b['mean_score']:.3f} "
            f"| {b['fraud_rate']:.3f} |" for b in bins]
    return "| score bin | transactions | mean score | fraud rate |\n|---|---|---|---|\n" + "\n".join(rows)


def _removed_mask(window, scores):  # rows the protocol drops (known-compromised cards)
    from ml.training.metrics import known_compromised_mask

    return known_compromised_mask(window.eval_data(scores))


@dg.asset(
    group_name=GROUP, partitions_def=daily_partitions, deps=[model_evaluation], kinds={"bentoml"},
    description="Champion/challenger gate: the model of D replaces the champion iff it is not worse on the "
                "same test window (AP and AUC ROC within the tolerance). Decision recorded.",
)
def champion_gate(context: dg.AssetExecutionContext, config: GateConfig,
                  duckdb: DuckDBResource) -> dg.MaterializeResult:
    from ml import registry
    from ml.training.training_set import as_datetime

    day = context.partition_key
    record = json.loads((_report_dir(day) / "metrics.json").read_text())
    challenger = registry.get(record["model_tag"])
    current = registry.champion()
    champion_metrics, champion_tag, note = None, None, ""
    if current is not None:
        champion_tag = str(current.tag)
        md = current.info.metadata
        try:  # any champion with feature names is compared on the same window, gated or not (e.g. a stand-in)
            with features_connection(duckdb.database) as con:
                cm, _, _ = _evaluate(con, current, as_datetime(record["test_start"]),
                                     as_datetime(record["test_end"]), int(record["top_k"]))
            champion_metrics = cm.summary()
        except (KeyError, ValueError) as e:  # no feature names, or features this warehouse lacks
            note = f"champion {champion_tag} cannot be scored on this window ({e!r}): not comparable"
        train_end = md.get("train_end")
        if train_end and as_datetime(train_end) > as_datetime(record["test_start"]):
            note += " champion's training data overlaps the test window (its figures are optimistic)"
    decision = registry.gate(str(challenger.tag), record["metrics"], champion_metrics, config.tolerance,
                             evaluation_window={"start": record["test_start"], "end": record["test_end"]},
                             champion_tag=champion_tag, note=note.strip())
    rows = [f"| {k} | {record['metrics'][k]:.4f} | "
            + (f"{champion_metrics[k]:.4f} |" if champion_metrics else "- |")
            for k in ("auc_roc", "average_precision") + tuple(
                k for k in record["metrics"] if k.startswith("card_precision_at_"))]
    table = ("| metric | challenger | champion |\n|---|---|---|\n" + "\n".join(rows)
             + f"\n\n**{'PROMOTED' if decision.promoted else 'REJECTED'}** (tolerance {config.tolerance}): "
             + decision.reason + (f"\n\nNote: {note.strip()}" if note else ""))
    context.log.info(f"gate {day}: {'promoted' if decision.promoted else 'rejected'} {challenger.tag}: "
                     f"{decision.reason}")
    return dg.MaterializeResult(metadata={
        "promoted": decision.promoted, "reason": decision.reason, "challenger": str(challenger.tag),
        "previous_champion": champion_tag or "none", "champion": str(registry.champion().tag),
        "tolerance": config.tolerance, "decision": dg.MetadataValue.json(decision.as_dict()),
        "comparison": dg.MetadataValue.md(table),
    })
