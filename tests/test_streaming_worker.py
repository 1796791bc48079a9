"""Stream worker behaviour: dead letters (replay and the real broker), idempotent labels, the checkpoint the
service reads, and the Dagster streaming group (snapshot asset, drift sensor)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    from ml.data.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(n_customers=60, n_terminals=120, n_days=12, seed=5), progress=False).to_pandas()


def _settings(tmp: Path):
    from ml.settings import get_settings

    return get_settings().model_copy(update={"data_dir": tmp, "online_store": "memory"})


def test_replay_dead_letters_bad_rows_and_learns_each_label_once(tiny: pd.DataFrame, tmp_path: Path) -> None:
    from ml.events import TOPIC_LABELS
    from ml.online.factory import make_store
    from streaming.sources import Message, ReplaySource
    from streaming.worker import Sink, Worker

    df = tiny.copy()
    df["tx_amount"] = df["tx_amount"].astype(float)
    df.loc[5, "tx_amount"] = -3.0  # violates the contract
    settings = _settings(tmp_path)
    sink = Sink(tmp_path / "out", keep_scores=True)
    w = Worker(ReplaySource(df), sink, make_store(settings), settings, restore=False)
    stats = w.run()
    dead = [json.loads(line) for line in (tmp_path / "out" / "dead_letter.jsonl").read_text().splitlines()]
    assert any("tx_amount" in d["reason"] and d["source_topic"] == "transactions" for d in dead)
    assert stats.transactions == len(df) - 1 == len({s["transaction_id"] for s in sink.scores})
    assert stats.labels_learned == len(df) - 1  # the bad row's label is dead-lettered (no transaction)
    assert any("never saw" in d["reason"] for d in dead) or stats.labels_received == len(df)
    # A replayed label (duplicate delivery, as a Kafka message) is not learnt twice.
    row = df.loc[10]
    label = {"transaction_id": str(row.transaction_id), "tx_fraud": 1, "label_time": row.label_time.isoformat()}
    before = w.model.n_learned
    w.process([Message(TOPIC_LABELS, 0, 10**6, json.dumps(label).encode(), 0.0)])
    w.drain_labels()
    assert w.model.n_learned == before and w.stats.duplicate_labels == 1


def test_service_reads_river_checkpoint(tiny: pd.DataFrame, tmp_path: Path) -> None:
    from ml.features.spec import FEATURE_NAMES
    from ml.online.checkpoint import load_model, river_dir
    from ml.online.factory import make_store
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    settings = _settings(tmp_path)
    assert load_model(river_dir(settings)) is None
    w = Worker(ReplaySource(tiny), Sink(), make_store(settings), settings, restore=False)
    w.run()
    model = load_model(river_dir(settings))
    x = dict.fromkeys(FEATURE_NAMES, 1.0)
    assert model is not None and model.n_learned == len(tiny)
    assert model.predict(x) == pytest.approx(w.model.predict(x))


@pytest.mark.kafka
def test_kafka_malformed_event_goes_to_dead_letter_topic(tmp_path: Path) -> None:
    from confluent_kafka import Producer

    from ml.online.factory import make_store
    from streaming.broker import running_broker
    from streaming.kafka_io import ensure_topics, producer_config, read_topic
    from streaming.sources import KafkaSource
    from streaming.worker import KafkaSink, Worker

    settings = _settings(tmp_path)
    with running_broker() as broker:
        ensure_topics(broker.bootstrap)
        p = Producer(producer_config(broker.bootstrap))
        good = {"transaction_id": "t1", "tx_datetime": "2018-04-01T10:00:00", "customer_id": "c1",
                "terminal_id": "k1", "tx_amount": 12.5}
        p.produce("transactions", json.dumps(good).encode())
        p.produce("transactions", b"{not json")
        p.produce("transactions", json.dumps(good | {"transaction_id": "t2", "tx_amount": "lots"}).encode())
        p.produce("labels", json.dumps({"transaction_id": "t1", "tx_fraud": 1,
                                        "label_time": "2018-04-08T10:00:00"}).encode())
        p.flush(10)
        w = Worker(KafkaSource(broker.bootstrap), KafkaSink(broker.bootstrap), make_store(settings),
                   settings, restore=False)
        try:
            stats = w.run(max_events=4, idle_timeout=5)
        finally:
            w.close()
        dead = read_topic(broker.bootstrap, "dead-letter")
        scores = read_topic(broker.bootstrap, "scores")
    assert stats.transactions == 1 and stats.labels_learned == 1
    assert sorted(d["offset"] for d in dead) == [1, 2]
    assert any(d["reason"].startswith("not JSON") for d in dead)
    assert any("tx_amount" in d["reason"] for d in dead)
    assert [s["transaction_id"] for s in scores] == ["t1"]


@pytest.mark.pipeline
def test_dagster_streaming_snapshot_and_drift_sensor(tiny: pd.DataFrame) -> None:
    import dagster as dg

    from ml.online.factory import make_store
    from ml.settings import get_settings
    from orchestration.assets.streaming import river_snapshot
    from orchestration.sensors import drift_event_sensor
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    settings = get_settings().model_copy(update={"online_store": "memory"})  # the tests' private data dir
    w = Worker(ReplaySource(tiny), Sink(), make_store(settings), settings, restore=False)
    w.run()
    result = dg.materialize([river_snapshot])
    meta = result.asset_materializations_for_node("river_snapshot")[0].metadata
    assert meta["rolling_labels_learned"].value == len(tiny)
    assert Path(meta["snapshot"].value).exists()

    drift_file = settings.drift_events_path
    drift_file.parent.mkdir(parents=True, exist_ok=True)
    event = {"time": "2018-05-01T00:00:00", "detector": "ADWIN", "stream": "river_error", "details": {}}
    with open(drift_file, "a") as f:
        f.write(json.dumps(event) + "\n")
    ctx = dg.build_sensor_context(cursor=None)
    req = drift_event_sensor(ctx)
    assert isinstance(req, dg.RunRequest) and req.tags["fraud/drift_streams"] == "river_error"
    again = drift_event_sensor(dg.build_sensor_context(cursor=ctx.cursor))
    assert isinstance(again, dg.SkipReason)


def test_adwin_drift_event_once_new_pattern_labels_arrive(tmp_path: Path) -> None:
    """Injected drift (card testing): River's error stream raises a drift event after its first labels."""
    from ml.data.simulate import SimulationConfig, simulate
    from ml.online.factory import make_store
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    df = simulate(SimulationConfig(n_customers=100, n_terminals=200, n_days=24, seed=5, drift_start_day=12,
                                   card_testing_customers_per_day=2), progress=False).to_pandas()
    first_new_label = df.loc[df["tx_fraud_scenario"] == 4, "label_time"].min()
    settings = _settings(tmp_path)
    w = Worker(ReplaySource(df), Sink(), make_store(settings), settings, restore=False)
    stats = w.run()
    events = [json.loads(line) for line in w.drift_file.read_text().splitlines()]
    assert len(events) == stats.drift_events == w.model.drifts
    after = [e for e in events if pd.Timestamp(e["time"]) >= first_new_label]
    assert after and after[0]["stream"] == "river_error" and after[0]["detector"] == "ADWIN"
    assert pd.Timestamp(after[0]["time"]) - first_new_label < pd.Timedelta(days=2)


@pytest.mark.kafka
def test_broker_command_stops_tansu_on_sigterm(tmp_path: Path) -> None:
    """`fraud broker` then `kill`: the broker it started goes with it (no orphaned tansu on the port)."""
    import signal
    import subprocess
    import sys
    import time

    from streaming.broker import free_port, port_open

    port = free_port()
    # tansu logs to the inherited stderr: a file, not a pipe nobody drains.
    with open(tmp_path / "broker.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", "from ml.cli import main; main()", "broker", "--port",
                                 str(port)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while "tansu listening" not in (tmp_path / "broker.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "broker.log").read_text()
            time.sleep(0.2)
        assert port_open("127.0.0.1", port, timeout=5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", port, timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"tansu still listens on {port} after its `fraud broker` was killed")
            time.sleep(0.2)
    finally:
        proc.kill()
