"""Streaming benchmark: end-to-end events/s (embedded replay and through Kafka), p99 event-to-score latency at
2,000 events/s, and a bare River predict/learn loop on the same feature vectors (the ratio shows what the
online features, champion scoring, joins and checkpoints cost on top of River itself).

An event is a transaction or a label. Everything runs in this process except the broker (tansu) and, for the
latency run, the paced publisher. Writes benchmarks/results/streaming.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
N_CUSTOMERS = int(os.environ.get("BENCH_STREAM_CUSTOMERS", "1000"))
N_DAYS = int(os.environ.get("BENCH_STREAM_DAYS", "30"))
LATENCY_RATE = 2000.0
LATENCY_EVENTS = int(os.environ.get("BENCH_STREAM_LATENCY_EVENTS", "20000"))


def _settings(tmp: Path):
    import dataclasses

    from ml.settings import get_settings

    return dataclasses.replace(get_settings(), data_dir=tmp, online_store="memory")


def train_champion(df, settings, days: int = 10):
    """A small XGBoost on the online features of the first ``days`` days (stands in for the registry's)."""
    import xgboost as xgb

    from ml.features.spec import FEATURE_NAMES
    from streaming.sources import ReplaySource
    from streaming.worker import Champion, Sink, Worker, build_store

    cut = df["tx_datetime"].min() + np.timedelta64(days, "D")
    head = df[df["tx_datetime"] < cut]
    w = Worker(ReplaySource(head), Sink(), build_store(settings), settings, restore=False,
               checkpoint_dir=settings.data_dir / "warmup-ckpt", checkpoint_every=10**9,
               checkpoint_interval_s=1e9)
    w.run()
    fraud = dict(zip(head["transaction_id"].astype(str), head["tx_fraud"].astype(int), strict=True))
    X = np.array([rec[1] for rec in w.pending.values()], dtype=np.float32)
    y = np.array([fraud[tid] for tid in w.pending])
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.2, "nthread": 1},
                        xgb.DMatrix(X, label=y, feature_names=list(FEATURE_NAMES)), num_boost_round=50)
    return Champion(booster, list(FEATURE_NAMES), 0.5, "bench")


def run_embedded(df, settings, champion, rate: float | None = None) -> tuple[dict, object]:
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker, build_store

    w = Worker(ReplaySource(df, rate=rate), Sink(), build_store(settings), settings, champion=champion,
               restore=False, checkpoint_dir=settings.data_dir / f"ckpt-embedded-{rate}")
    stats = w.run()
    return stats.summary(), w


def run_kafka(bootstrap: str, settings, champion, total: int, tag: str) -> dict:
    from streaming.sources import KafkaSource
    from streaming.worker import KafkaSink, Worker, build_store

    w = Worker(KafkaSource(bootstrap), KafkaSink(bootstrap), build_store(settings), settings,
               champion=champion, restore=False, checkpoint_dir=settings.data_dir / f"ckpt-kafka-{tag}")
    try:
        stats = w.run(max_events=total, idle_timeout=30)
    finally:
        w.close()
    return stats.summary()


def bare_river(worker) -> float:
    """River alone on the worker's own vectors: predict per transaction, learn per label."""
    from ml.features.spec import FEATURE_NAMES
    from streaming.river_model import make_model

    vectors = [(dict(zip(FEATURE_NAMES, rec[1], strict=True)), i % 2) for i, rec in
               enumerate(worker.pending.values())]
    model = make_model().model
    t0 = time.perf_counter()
    for x, y in vectors:
        model.predict_proba_one(x)
        model.learn_one(x, bool(y))
    return 2 * len(vectors) / (time.perf_counter() - t0)


def main() -> None:
    import pandas as pd

    from ml.simulate import SimulationConfig, simulate
    from streaming.broker import running_broker
    from streaming.kafka_io import ensure_topics

    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    settings = _settings(tmp)
    config = SimulationConfig(n_customers=N_CUSTOMERS, n_terminals=2 * N_CUSTOMERS, n_days=N_DAYS, seed=1)
    df = simulate(config, progress=False)
    path = tmp / "tx.parquet"
    df.to_parquet(path)
    df = pd.read_parquet(path)
    total = 2 * len(df)
    print(f"[streaming] {len(df):,} transactions -> {total:,} events", flush=True)
    champion = train_champion(df, settings)

    embedded, worker = run_embedded(df, settings, champion)
    print(f"[streaming] embedded: {embedded['events_per_s']:,.0f} events/s", flush=True)
    bare = bare_river(worker)
    print(f"[streaming] bare River: {bare:,.0f} events/s", flush=True)
    head = df.iloc[: LATENCY_EVENTS // 2]
    embedded_paced, _ = run_embedded(head, settings, champion, rate=LATENCY_RATE)

    with running_broker() as broker:
        ensure_topics(broker.bootstrap)
        publish = [sys.executable, "-c", "from ml.cli import main; main()", "publish", "--path", str(path),
                   "--bootstrap", broker.bootstrap]
        subprocess.run(publish, check=True, capture_output=True)
        kafka = run_kafka(broker.bootstrap, settings, champion, total, "bulk")
        print(f"[streaming] kafka: {kafka['events_per_s']:,.0f} events/s", flush=True)

    # Latency at 2,000 events/s through Kafka: a paced publisher in another process, the worker here.
    head_path = tmp / "head.parquet"
    head.to_parquet(head_path)
    with running_broker() as broker:
        ensure_topics(broker.bootstrap)
        pub = subprocess.Popen([sys.executable, "-c", "from ml.cli import main; main()", "publish", "--path",
                                str(head_path), "--bootstrap", broker.bootstrap, "--rate", str(LATENCY_RATE)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        paced = run_kafka(broker.bootstrap, settings, champion, 2 * len(head), "paced")
        pub.wait(timeout=120)
    print(f"[streaming] kafka at {LATENCY_RATE:.0f}/s: p99 {paced['p99_ms']:.1f} ms", flush=True)

    result = {
        "embedded_events_per_s": embedded["events_per_s"],
        "kafka_events_per_s": kafka["events_per_s"],
        "p99_ms": round(paced["p99_ms"], 2),
        "bare_river_events_per_s": round(bare, 1),
        "embedded_over_bare_river": round(embedded["events_per_s"] / bare, 3),
        "p50_ms": round(paced["p50_ms"], 2),
        "embedded_p99_ms_at_rate": round(embedded_paced["p99_ms"], 2),
        "latency_rate_events_per_s": LATENCY_RATE,
        "events": total,
        "transactions": len(df),
        "river_model": worker.model.name,
        "champion": "xgboost (50 trees, trained on the first 10 days' online features)",
        "goals": {"embedded_events_per_s": 20000, "kafka_events_per_s": 10000, "p99_ms": 50},
        "cpu_count": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
