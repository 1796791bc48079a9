"""Adaptation to injected drift: River vs the frozen XGBoost champion, daily AP after the onset.

Writes benchmarks/results/adaptation.json and adaptation.png (see streaming.adaptation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    import pandas as pd

    from ml.simulate import SimulationConfig, simulate
    from streaming.adaptation import adaptation_report

    n_days = int(os.environ.get("BENCH_ADAPT_DAYS", "70"))
    drift_day = int(os.environ.get("BENCH_ADAPT_DRIFT_DAY", "35"))
    customers = int(os.environ.get("BENCH_ADAPT_CUSTOMERS", "1000"))
    config = SimulationConfig(n_customers=customers, n_terminals=2 * customers, n_days=n_days, seed=2,
                              drift_start_day=drift_day,
                              card_testing_customers_per_day=max(2, customers // 200))
    df = simulate(config, progress=False)
    onset = pd.Timestamp(config.start_date) + pd.Timedelta(days=drift_day)
    RESULTS.mkdir(exist_ok=True)
    report = adaptation_report(df, onset, plot_path=RESULTS / "adaptation.png")
    report["simulation"] = {"n_customers": customers, "n_days": n_days, "drift_start_day": drift_day,
                            "transactions": len(df)}
    (RESULTS / "adaptation.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "daily"}, indent=2, default=str))


if __name__ == "__main__":
    main()
