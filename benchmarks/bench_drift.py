"""Drift loop figures: runs the drift demo (``benchmarks.drift_loop``), which writes results/drift.json."""

from __future__ import annotations


def main() -> None:
    from benchmarks.drift_loop import main as demo

    demo([])


if __name__ == "__main__":
    main()
