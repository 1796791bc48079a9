"""Foundation benchmark: default 183-day simulation and the dbt feature build on it.

Writes benchmarks/results/foundation.json: simulate_s, features_s (dbt `run` of the feature models,
wall clock including dbt's own start-up, after an untimed `dbt parse` -- Dagster parses the project when
it loads the definitions, so a materialization starts from a parsed manifest too), features_sql_s (the
models' execution time as dbt reports it), features_build_s (`dbt build`: the models again plus the 70
dbt tests, i.e. what the Dagster asset runs), features_peak_rss_mb (peak RSS of a dbt process, DuckDB
included), rows.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from ml.data.ingest import land
from ml.data.simulate import SimulationConfig, simulate, write_transactions
from ml.features.spec import FEATURES_TABLE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-foundation-"))
    t0 = time.perf_counter()
    df = simulate(SimulationConfig(), progress=True)
    simulate_s = time.perf_counter() - t0
    source = write_transactions(df, work / "transactions.parquet")
    db = work / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        stats = land(con, source, "2018-04-01", "2018-10-01")
    bin_dir = Path(sys.executable).parent

    def dbt(command: str) -> float:
        cmd = [str(bin_dir / "dbt"), command, "--profiles-dir", ".", "--target-path", str(work / "target"),
               "--log-path", str(work / "logs")]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT / "dbt_project", env={"FRAUD_WAREHOUSE": str(db), "PATH": str(bin_dir)},
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    dbt("parse")
    features_s = dbt("run")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    run_results = json.loads((work / "target" / "run_results.json").read_text())
    sql_s = sum(r["execution_time"] for r in run_results["results"])
    features_build_s = dbt("build")
    with duckdb.connect(str(db), read_only=True) as con:
        n_feat = con.execute(f"select count(*) from {FEATURES_TABLE}").fetchone()[0]
    result = {
        "simulate_s": round(simulate_s, 2),
        "features_s": round(features_s, 2),
        "features_sql_s": round(sql_s, 2),
        "features_build_s": round(features_build_s, 2),
        "features_peak_rss_mb": round(peak_mb, 1),
        "rows": int(n_feat),
        "frauds": stats.frauds,
        "fraud_rate": round(stats.frauds / stats.rows, 5),
        "goal_simulate_s": 15,
        "goal_features_s": 10,
    }
    assert n_feat == stats.rows == len(df)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "foundation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
