"""Streaming benchmark: end-to-end events/s (embedded replay and through Kafka), p99 event-to-score latency at
2,000 events/s, and a bare River predict/learn loop on the same feature vectors (the ratio shows what the
online features, champion scoring, joins and checkpoints cost on top of River itself).

An event is a transaction or a label. The worker runs in this process; the broker (tansu) and the publishers
(``fraud publish``) run beside it. Latency is measured through Kafka, from the producer's timestamp to the
score, after a warm-up (the first ``WARMUP_EVENTS`` events, so entity state and River are not empty), on
``LATENCY_EVENTS`` events published at a fixed 2,000 events/s, with checkpoints at their normal cadence.
The worker is set up as `fraud worker` sets it up (``freeze_gc``). Writes benchmarks/results/streaming.json.
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
EMBEDDED_RUNS = int(os.environ.get("BENCH_STREAM_RUNS", "2"))  # best of N (a shared machine is noisy)
LATENCY_RATE = 2000.0
WARMUP_EVENTS = int(os.environ.get("BENCH_STREAM_WARMUP_EVENTS", "30000"))
LATENCY_EVENTS = int(os.environ.get("BENCH_STREAM_LATENCY_EVENTS", "40000"))
CLI = [sys.executable, "-c", "from ml.cli import main; main()"]


def _settings(tmp: Path, store: str = "memory"):

    from ml.settings import get_settings

    return get_settings().model_copy(update={"data_dir": tmp, "online_store": store})


def train_champion(df, settings, days: int = 10):
    """A small XGBoost on the online features of the first ``days`` days (stands in for the registry's)."""
    import xgboost as xgb

    from ml.champion import Champion
    from ml.features.spec import FEATURE_NAMES
    from ml.online.factory import make_store
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    cut = df["tx_datetime"].min() + np.timedelta64(days, "D")
    head = df[df["tx_datetime"] < cut]
    w = Worker(ReplaySource(head), Sink(), make_store(settings), settings, restore=False,
               checkpoint_dir=settings.data_dir / "warmup-ckpt", checkpoint_every=10**9,
               checkpoint_interval_s=1e9)
    w.run()
    fraud = dict(zip(head["transaction_id"].astype(str), head["tx_fraud"].astype(int), strict=True))
    ids, X = w.pending_vectors()
    y = np.array([fraud[tid] for tid in ids])
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.2, "nthread": 1},
                        xgb.DMatrix(X, label=y, feature_names=list(FEATURE_NAMES)), num_boost_round=50)
    return Champion("bench", booster, tuple(FEATURE_NAMES), 0.5)


def run_embedded(df, settings, champion, rate: float | None = None, tag: str = "") -> tuple[dict, object]:
    from ml.online.factory import make_store
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    store = make_store(settings, prefix=f"bench-stream-{tag}:")
    w = Worker(ReplaySource(df, rate=rate), Sink(), store, settings, champion=champion, restore=False,
               freeze_gc=True,
               checkpoint_dir=settings.data_dir / f"ckpt-embedded-{rate}-{tag}")
    cpu0 = time.process_time()
    try:
        stats = w.run()
    finally:
        if settings.online_store == "redis":
            w.features.store.clear()
        w.close()
    # Events per CPU-second of this process: what an idle core would do (wall-clock figures on a shared
    # machine are noisy). Not the headline figure.
    cpu_rate = round(stats.events / (time.process_time() - cpu0), 1)
    return stats.summary() | {"events_per_cpu_s": cpu_rate}, w


def bare_river(worker, df) -> float:
    """River alone on the worker's own vectors and the true labels: a predict and a learn per transaction.

    Same model (pipeline and class weight) as the worker's, without features, joins, champion or I/O.
    """
    from ml.features.spec import FEATURE_NAMES
    from ml.online.river_model import CANDIDATES

    fraud = dict(zip(df["transaction_id"].astype(str), df["tx_fraud"].astype(int), strict=True))
    ids, X = worker.pending_vectors()
    vectors = [(dict(zip(FEATURE_NAMES, row, strict=True)), bool(fraud[tid]))
               for tid, row in zip(ids, X.tolist(), strict=True)]
    factory, pos_weight = CANDIDATES[worker.model.name]
    model = factory()
    t0 = time.perf_counter()
    for x, y in vectors:
        model.predict_proba_one(x)
        if y and pos_weight != 1.0:
            model.learn_one(x, y, w=pos_weight)
        else:
            model.learn_one(x, y)
    return 2 * len(vectors) / (time.perf_counter() - t0)


def _publish(path: Path, bootstrap: str, *args: str) -> list[str]:
    return [*CLI, "publish", "--path", str(path), "--bootstrap", bootstrap, *args]


def run_kafka_bulk(path: Path, settings, champion, total: int) -> dict:
    """Publish everything first, then time the worker draining the topics."""
    from ml.online.factory import make_store
    from streaming.broker import running_broker
    from streaming.kafka_io import ensure_topics
    from streaming.sources import KafkaSource
    from streaming.worker import KafkaSink, Worker

    with running_broker() as broker:
        ensure_topics(broker.bootstrap)
        subprocess.run(_publish(path, broker.bootstrap), check=True, capture_output=True)
        w = Worker(KafkaSource(broker.bootstrap), KafkaSink(broker.bootstrap), make_store(settings),
                   settings, champion=champion, restore=False, freeze_gc=True,
                   checkpoint_dir=settings.data_dir / "ckpt-kafka-bulk")
        try:
            stats = w.run(max_events=total, idle_timeout=30)
        finally:
            w.close()
    return stats.summary()


def run_kafka_latency(path: Path, settings, champion) -> dict:
    """Warm up on the first events (unpaced), then publish the next ones at 2,000 events/s and measure."""
    from ml.online.factory import make_store
    from streaming.broker import running_broker
    from streaming.kafka_io import ensure_topics
    from streaming.sources import KafkaSource
    from streaming.worker import KafkaSink, Worker

    with running_broker() as broker:
        ensure_topics(broker.bootstrap)
        subprocess.run(_publish(path, broker.bootstrap, "--limit", str(WARMUP_EVENTS)), check=True,
                       capture_output=True)
        w = Worker(KafkaSource(broker.bootstrap), KafkaSink(broker.bootstrap), make_store(settings),
                   settings, champion=champion, restore=False, freeze_gc=True,
                   checkpoint_dir=settings.data_dir / "ckpt-kafka-paced")
        try:
            # Mid-stream: no draining of buffered labels (their label_time is still to come).
            w.run(max_events=WARMUP_EVENTS, idle_timeout=30, drain_at_end=False)
            w.stats.latencies_ms.clear()
            checkpoints0, t0 = w.stats.checkpoints, time.perf_counter()
            pub = subprocess.Popen(_publish(path, broker.bootstrap, "--skip", str(WARMUP_EVENTS), "--limit",
                                            str(LATENCY_EVENTS), "--rate", str(LATENCY_RATE)),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            w.run(max_events=LATENCY_EVENTS, idle_timeout=30, drain_at_end=False)
            wall = time.perf_counter() - t0
            if pub.wait(timeout=120) != 0:
                raise RuntimeError("paced publisher failed")
        finally:
            w.close()
    lat = np.fromiter(w.stats.latencies_ms, dtype=np.float64)
    return {"scored": len(lat), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "p999_ms": float(np.percentile(lat, 99.9)),
            "max_ms": float(lat.max()), "checkpoints_during": w.stats.checkpoints - checkpoints0,
            "wall_s": round(wall, 1)}


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def main() -> None:
    import pandas as pd

    from ml.data.simulate import SimulationConfig, simulate

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    settings = _settings(tmp)
    config = SimulationConfig(n_customers=N_CUSTOMERS, n_terminals=2 * N_CUSTOMERS, n_days=N_DAYS, seed=1)
    df = simulate(config, progress=False)
    path = tmp / "tx.parquet"
    df.write_parquet(path)
    df = pd.read_parquet(path)
    total = 2 * len(df)
    print(f"[streaming] {len(df):,} transactions -> {total:,} events", flush=True)
    champion = train_champion(df, settings)

    runs, cpu_runs = [], []
    for i in range(EMBEDDED_RUNS):
        summary, worker = run_embedded(df, settings, champion, tag=str(i))
        runs.append(summary["events_per_s"])
        cpu_runs.append(summary["events_per_cpu_s"])
        print(f"[streaming] embedded run {i + 1}: {summary['events_per_s']:,.0f} events/s "
              f"({summary['events_per_cpu_s']:,.0f} per CPU-second)", flush=True)
    embedded = max(runs)
    bare = bare_river(worker, df)
    print(f"[streaming] bare River: {bare:,.0f} events/s", flush=True)

    redis_rate = None
    if _redis_up(settings.redis_url.get_secret_value()):
        redis_summary, _ = run_embedded(df, _settings(tmp / "redis", "redis"), champion, tag="redis")
        redis_rate = redis_summary["events_per_s"]
        print(f"[streaming] embedded, Redis store: {redis_rate:,.0f} events/s", flush=True)

    kafka = run_kafka_bulk(path, settings, champion, total)
    print(f"[streaming] kafka: {kafka['events_per_s']:,.0f} events/s", flush=True)
    paced = run_kafka_latency(path, settings, champion)
    print(f"[streaming] kafka at {LATENCY_RATE:.0f}/s: p50 {paced['p50_ms']:.1f} ms, "
          f"p99 {paced['p99_ms']:.1f} ms", flush=True)

    result = {
        "embedded_events_per_s": embedded,
        "kafka_events_per_s": kafka["events_per_s"],
        "p99_ms": round(paced["p99_ms"], 2),
        "bare_river_events_per_s": round(bare, 1),
        "embedded_over_bare_river": round(embedded / bare, 3),
        "embedded_redis_events_per_s": redis_rate,
        "latency": {k: round(v, 2) if isinstance(v, float) else v for k, v in paced.items()},
        "embedded_runs_events_per_s": runs,
        "embedded_events_per_cpu_s": max(cpu_runs),
        "goals": {"embedded_events_per_s": 20000, "kafka_events_per_s": 10000, "p99_ms": 50},
        "config": {
            "simulation": {"n_customers": N_CUSTOMERS, "n_terminals": 2 * N_CUSTOMERS, "n_days": N_DAYS,
                           "seed": 1, "transactions": len(df), "events": total},
            "event": "a transaction or a label",
            "river_model": worker.model.name,
            "champion": "xgboost, 50 trees of depth 4, trained on the first 10 days' online features",
            "online_store": "in-process (memory) unless noted",
            "worker_batch_size": worker.batch_size,
            "checkpoint": {"every_events": worker.checkpoint_every, "every_s": worker.checkpoint_interval_s},
            "latency_rate_events_per_s": LATENCY_RATE,
            "latency_warmup_events": WARMUP_EVENTS,
            "latency_events": LATENCY_EVENTS,
            "latency_measured": "Kafka producer timestamp -> score emitted (worker in this process, tansu "
                                "broker and paced `fraud publish` beside it)",
            "embedded": f"best of {EMBEDDED_RUNS} runs",
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
        },
    }
    adaptation = RESULTS / "adaptation.json"  # written by bench_adaptation (runs first in `make bench`)
    if adaptation.exists():
        a = json.loads(adaptation.read_text())
        result["adaptation"] = {"results": "benchmarks/results/adaptation.json", "plot": a.get("plot"),
                                "river_model": a["river_model"], "drift_onset": a["drift_onset"],
                                "first_labels_known": a["first_labels_known"],
                                **{f"{m}_{k}": a["models"][m][k] for m in (a["river_model"], "xgboost")
                                   for k in ("days_to_recover", "mean_ap_from_first_labels")}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
