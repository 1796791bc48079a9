"""Drift loop figures: runs the drift demo (``orchestration.drift_demo``), which writes results/drift.json."""

from __future__ import annotations


def main() -> None:
    from orchestration.drift_demo import main as demo

    demo([])


if __name__ == "__main__":
    main()
