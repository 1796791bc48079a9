"""`make bench`: run every benchmarks/bench_*.py in turn; each writes benchmarks/results/<name>.json.

Run alone on the machine: the figures are wall-clock on 2 cores. `python -m benchmarks.run NAME` runs one.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def machine() -> dict[str, object]:
    """What the figures were measured on: absolute seconds do not travel between machines."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "host": platform.node()}


def record_machine(name: str) -> None:
    """Stamp the benchmark's result file (if it wrote one) with the machine."""
    path = RESULTS / f"{name}.json"
    if path.exists():
        result = json.loads(path.read_text())
        result["machine"] = machine()
        path.write_text(json.dumps(result, indent=2, default=str))


def main(argv: list[str]) -> None:
    names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        t0 = time.perf_counter()
        print(f"== benchmark {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()
        record_machine(name)
        print(f"== {name} done in {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
