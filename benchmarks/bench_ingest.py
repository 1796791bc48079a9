"""Ingest benchmark: the default 183-day simulation written as CSV, landed by ``ml.data.ingest.land``.

Writes benchmarks/results/ingest.json: wall time and peak RSS of the simulation (``simulate()``) and of landing
its CSV (polars reads and checks every row, DuckDB stores them), each in a fresh process so the peaks are its
own. Same-run baseline: DuckDB's own ``read_csv`` of the same file into a table, with no checks at all (what the
loader did before polars, without its validation); the goal is a ratio to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Each step runs in its own interpreter and prints {"s": wall seconds, "rss_mb": peak RSS, ...} as its last line.
_PRELUDE = "import json, resource, sys, time\nt0 = time.perf_counter()\n"
_REPORT = ("\nprint(json.dumps({'s': time.perf_counter() - t0, "
           "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))\n")
SIMULATE = """
from ml.data.simulate import SimulationConfig, simulate, write_transactions
df = simulate(SimulationConfig(), progress=False)
extra = {'rows': df.height, 'simulate_s': time.perf_counter() - t0}
write_transactions(df, sys.argv[1])
"""
LAND = """
import duckdb
from ml.data.ingest import land
with duckdb.connect(sys.argv[2]) as con:
    stats = land(con, sys.argv[1], '2018-04-01', '2018-10-01')
extra = {'landed': stats.landed, 'quarantined': stats.quarantined_total}
"""
BASELINE = """
import duckdb
with duckdb.connect(sys.argv[2]) as con:
    con.execute('create table t as select * from read_csv(?)', [sys.argv[1]])
    extra = {'rows': con.execute('select count(*) from t').fetchone()[0]}
"""


def _step(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PRELUDE + code + _REPORT, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(rounds: int = 3) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    csv = work / "transactions.csv"
    simulate = _step(SIMULATE, str(csv))  # and writes the CSV every round reads
    runs = []
    for k in range(rounds):  # alternating, so both sides share the machine's state
        runs.append({"land": _step(LAND, str(csv), str(work / f"land-{k}.duckdb")),
                     "read_csv": _step(BASELINE, str(csv), str(work / f"base-{k}.duckdb"))})
    land_s = sorted(r["land"]["s"] for r in runs)[rounds // 2]
    base_s = sorted(r["read_csv"]["s"] for r in runs)[rounds // 2]
    result = {
        "simulate_s": round(simulate["simulate_s"], 2),
        "simulate_peak_rss_mb": round(simulate["rss_mb"], 1),
        "csv_mb": round(csv.stat().st_size / 2**20, 1),
        "rows": simulate["rows"],
        "land_s": round(land_s, 2),
        "land_peak_rss_mb": round(max(r["land"]["rss_mb"] for r in runs), 1),
        "read_csv_s": round(base_s, 2),
        "read_csv_peak_rss_mb": round(max(r["read_csv"]["rss_mb"] for r in runs), 1),
        "land_over_read_csv": round(land_s / base_s, 2),
        "runs": runs,
        "goal_simulate_s": 15,
    }
    assert all(r["land"]["landed"] == simulate["rows"] and r["land"]["quarantined"] == 0 for r in runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
