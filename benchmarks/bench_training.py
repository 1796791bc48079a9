"""Model-quality bar: the book's protocol on the project's simulator with the book's default parameters.

Training day D = 2018-08-08: rows up to 2018-07-31 (labels known at D with the 7-day delay), test
2018-08-08..14, cards known compromised removed (ml.training.metrics). Target: beat the book's best XGBoost,
AUC ROC 0.869, AP 0.687, CP@100 0.303; a 28-day window (21 train + 7 validation, refit on both) fitted in
<= 15 s. The headline figures are those of the window (28 or 56 days) with the higher validation AP, with a
5-seed spread. Writes benchmarks/results/training.json.

Uses the configured data directory (FRAUD_DATA_DIR, default ./data); builds the full-size warehouse through
Dagster (ingest + dbt) if it does not reach the test window yet.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

BOOK = {"auc_roc": 0.869, "average_precision": 0.687, "card_precision_at_100": 0.303}
DAY = "2018-08-08"
SEEDS = 5
RESULTS = Path(__file__).parent / "results" / "training.json"


def _ensure_warehouse() -> Path:
    import duckdb

    from ml.features.spec import FEATURES_TABLE
    from ml.settings import get_settings

    wh = get_settings().warehouse
    if wh.exists():
        with duckdb.connect(str(wh), read_only=True) as con:
            try:
                last = con.execute(f"select max(tx_datetime) from {FEATURES_TABLE}").fetchone()[0]
            except duckdb.CatalogException:
                last = None
        if last is not None and str(last) >= "2018-08-14":
            return wh
    from orchestration.demo import materialize
    from orchestration.partitions import daily_partitions
    from orchestration.resources import prepare_dbt_project

    keys = daily_partitions.get_partition_keys()
    prepare_dbt_project()
    assert materialize("raw_transactions", partition_range=(keys[0], keys[-1])).success
    assert materialize("group:features").success
    return wh


def main() -> None:
    from ml.settings import get_settings

    os.environ.setdefault("DAGSTER_HOME", str(get_settings().data_dir / "dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    from ml.data.warehouse import features_source
    from ml.training.evaluate import evaluate_booster, load_test_window
    from ml.training.train import XGBParams, fit
    from ml.training.training_set import SplitLengths, build

    wh = _ensure_warehouse()
    runs, inputs = {}, {}
    with features_source(wh) as con:  # the features snapshot, scanned lazily (the warehouse if there is none)
        # 28d: the project's default window (the fit-time figure); 56d: a longer history, which the
        # validation AP prefers (more scenario-2/3 examples); book_7d: the book's own 7-day training window.
        for name, cfg in (("28d", SplitLengths(train_days=21, valid_days=7, test_days=7, delay_days=7)),
                          ("56d", SplitLengths(train_days=49, valid_days=7, test_days=7, delay_days=7)),
                          ("book_7d", SplitLengths(train_days=7, valid_days=7, test_days=7, delay_days=7))):
            t0 = time.perf_counter()
            data = build(con, DAY, cfg)
            load_s = time.perf_counter() - t0
            res = fit(data, XGBParams())
            window = load_test_window(con, *data.windows.test, data.train.feature_names)
            metrics, _ = evaluate_booster(res.booster, window, data.train.feature_names, res.threshold)
            inputs[name] = (data, window)
            runs[name] = {**metrics.summary(), "fit_s": round(res.fit_s, 2), "load_s": round(load_s, 2),
                          "n_trees": res.n_trees, **res.valid_metrics,
                          "train_rows": len(data.train) + len(data.valid),
                          "windows": data.windows.as_dict(),
                          "daily_card_precision": metrics.daily.precision}
            print(name, {k: runs[name][k] for k in ("auc_roc", "average_precision", "card_precision_at_100",
                                                     "fit_s")}, flush=True)
    # The headline is the window that validation AP picks (never the test week), and a single seed is not
    # evidence at this margin: that window is refitted with 5 seeds and the spread is reported too.
    chosen = max(("28d", "56d"), key=lambda k: runs[k]["valid_average_precision"])
    data, window = inputs[chosen]
    seeds = [{k: runs[chosen][k] for k in BOOK}]  # seed 0: the run above
    for seed in range(1, SEEDS):
        res = fit(data, XGBParams(seed=seed))
        metrics, _ = evaluate_booster(res.booster, window, data.train.feature_names, res.threshold)
        seeds.append({k: metrics.summary()[k] for k in BOOK})
    spread = {k: {"mean": round(sum(s[k] for s in seeds) / SEEDS, 6), "min": min(s[k] for s in seeds),
                  "max": max(s[k] for s in seeds)} for k in BOOK}
    best = runs[chosen]
    out = {
        "auc_roc": best["auc_roc"], "average_precision": best["average_precision"],
        "card_precision_at_100": best["card_precision_at_100"], "fit_s_28d": runs["28d"]["fit_s"],
        "window": chosen,
        "window_choice": "the longer of 28d/56d only if its validation AP is higher (test week not used)",
        "book_best_xgboost": BOOK,
        "beats_book": {k: best[k] > v for k, v in BOOK.items()},
        "seeds": {"n": SEEDS, **spread,
                  "mean_beats_book": {k: spread[k]["mean"] > v for k, v in BOOK.items()}},
        "beats_book_28d": {k: runs["28d"][k] > v for k, v in BOOK.items()},
        "protocol": "D=2018-08-08: train/valid rows up to 2018-07-31 (labels known at D), "
                    "test 2018-08-08..14, known-compromised cards removed; 28d = 21 train + 7 validation "
                    "days, 56d = 49 + 7, refit on train + validation",
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("auc_roc", "average_precision", "card_precision_at_100",
                                          "fit_s_28d", "window", "beats_book", "seeds")}, indent=2))


if __name__ == "__main__":
    main()
