"""Adaptation to injected drift: River candidates vs the frozen XGBoost champion, daily AP after the onset.

A simulation with drift (card testing, a pattern the champion never saw, plus a shift of genuine spending;
see ml.data.simulate) is replayed through the stream worker; every River candidate runs the worker's delayed-label
protocol on the same feature vectors (benchmarks.adaptation). Writes benchmarks/results/adaptation.json and
adaptation.png; the pick of ``ml.online.river_model.DEFAULT_MODEL`` is read from this table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    import pandas as pd

    from benchmarks.adaptation import adaptation_report
    from ml.data.simulate import SimulationConfig, simulate
    from ml.online.river_model import LEARNING_RATE, logreg_with

    n_days = int(os.environ.get("BENCH_ADAPT_DAYS", "70"))
    drift_day = int(os.environ.get("BENCH_ADAPT_DRIFT_DAY", "35"))
    customers = int(os.environ.get("BENCH_ADAPT_CUSTOMERS", "1000"))
    # Card testing at the simulator's default intensity per customer (10 a day for 5,000 customers).
    config = SimulationConfig(n_customers=customers, n_terminals=2 * customers, n_days=n_days, seed=2,
                              drift_start_day=drift_day,
                              card_testing_customers_per_day=max(1, round(customers * 10 / 5000)))
    t0 = time.perf_counter()
    df = simulate(config, progress=False).to_pandas()
    onset = pd.Timestamp(config.start_date) + pd.Timedelta(days=drift_day)
    RESULTS.mkdir(exist_ok=True)
    # The default (scaled logistic regression) with other SGD steps: how LEARNING_RATE was chosen.
    sweep = {f"logreg_sgd{lr:g}": (logreg_with(lr), 1.0) for lr in (0.005, 0.02, 0.05) if lr != LEARNING_RATE}
    report = adaptation_report(df, onset, extra=sweep, plot_path=RESULTS / "adaptation.png")
    report["plot"] = "benchmarks/results/adaptation.png"
    report["simulation"] = {"n_customers": customers, "n_terminals": 2 * customers, "n_days": n_days,
                            "seed": 2, "drift_start_day": drift_day,
                            "card_testing_customers_per_day": config.card_testing_customers_per_day,
                            "genuine_amount_factor": config.genuine_amount_factor,
                            "drift_night_fraction": config.drift_night_fraction,
                            "label_delay": config.label_delay, "transactions": len(df),
                            "frauds": int(df["tx_fraud"].sum())}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (RESULTS / "adaptation.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "daily"}, indent=2, default=str))


if __name__ == "__main__":
    main()
