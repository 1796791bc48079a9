"""`make bench`: run every benchmarks/bench_*.py in turn; each writes benchmarks/results/<name>.json.

Run alone on the machine: the figures are wall-clock on 2 cores. `python -m benchmarks.run NAME` runs one.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def main(argv: list[str]) -> None:
    names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        t0 = time.perf_counter()
        print(f"== benchmark {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()
        print(f"== {name} done in {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
