"""The stream worker's trust boundary: events validated with the shared contract (Kafka and replay alike),
poison events dead-lettered with their reason while the stream goes on (and restarts), store calls in
bounded chunks, and the Kafka clients' security settings."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import model_state, private_redis_store

GOOD_TX = {"transaction_id": "t1", "tx_datetime": "2018-04-01T10:00:00", "customer_id": "c1",
           "terminal_id": "k1", "tx_amount": 12.5}


@pytest.fixture(scope="module")
def broker():
    """One broker for the module (tansu starts in a second; every test here uses its own topics' offsets)."""
    from streaming.broker import start_broker

    b = start_broker()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    from ml.data.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(n_customers=40, n_terminals=80, n_days=10, seed=11), progress=False).to_pandas()


def _settings(tmp: Path, store: str = "memory"):
    from ml.settings import get_settings

    return get_settings().model_copy(update={"data_dir": tmp, "online_store": store})


def _dead_letters(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _clear(store) -> None:
    store.clear()
    store.close()


# ------------------------------------------------------------------------------------------ the contract

@pytest.mark.parametrize(("change", "field", "why"), [
    ({"tx_datetime": "0001-01-01T00:00:00"}, "tx_datetime", "before 2000-01-01"),
    ({"tx_datetime": "2018-04-01T10:00:00+99:00"}, "tx_datetime", "valid datetime"),
    ({"tx_datetime": 1522576800}, "tx_datetime", "numbers are ambiguous"),
    ({"tx_datetime": "2999-01-01T00:00:00"}, "tx_datetime", "future"),
    ({"tx_amount": 1.5e308}, "tx_amount", "FRAUD_MAX_AMOUNT"),
    ({"tx_amount": -1}, "tx_amount", ">= 0"),
    ({"tx_amount": "12"}, "tx_amount", "number"),
    ({"transaction_id": "x" * 1_000_000}, "transaction_id", "longer than 64"),
    ({"transaction_id": " \t "}, "transaction_id", "whitespace"),
    ({"customer_id": "c\u200b1"}, "customer_id", "format"),
    ({"terminal_id": "k\x1f1"}, "terminal_id", "control"),
    ({"terminal_id": True}, "terminal_id", "valid string"),
])
def test_transaction_contract(change: dict, field: str, why: str) -> None:
    from ml.events import EventError, parse_transaction

    with pytest.raises(EventError) as err:
        parse_transaction(json.dumps(GOOD_TX | change).encode())
    assert field in err.value.reason and why in err.value.reason
    assert "x" * 100 not in err.value.reason  # the reason never repeats the value


def test_event_normalisation_and_labels() -> None:
    from ml.events import EventError, parse_label, parse_transaction

    tx = parse_transaction(json.dumps(GOOD_TX | {"tx_datetime": "2018-04-01T12:00:00+02:00",
                                                 "customer_id": 42}).encode())
    assert tx.tx_datetime == datetime(2018, 4, 1, 10) and tx.customer_id == "42"
    label = {"transaction_id": "t1", "tx_fraud": 1, "label_time": "2018-04-08T10:00:00"}
    assert parse_label(json.dumps(label).encode()).tx_fraud == 1
    assert parse_label(json.dumps(label | {"tx_fraud": 0.0}).encode()).tx_fraud == 0
    for bad in (2, -1, 0.6, True, "1", None):
        with pytest.raises(EventError, match="tx_fraud"):
            parse_label(json.dumps(label | {"tx_fraud": bad}).encode())
    for bad in ("0001-01-01T00:00:00", 1523181600, "soon"):
        with pytest.raises(EventError, match="label_time"):
            parse_label(json.dumps(label | {"label_time": bad}).encode())
    with pytest.raises(EventError, match="not JSON"):
        parse_label(b"[" * 100_000)
    with pytest.raises(EventError, match="expected a JSON object, got NoneType"):
        parse_label(None)  # a Kafka tombstone


def test_replay_trusts_only_what_the_parser_accepts(tiny: pd.DataFrame) -> None:
    """Replay validates exactly as Kafka: each trusted event is what the parser makes of it, and each
    untrusted one gets the same verdict from its dict (replay) as from its JSON (the Kafka message)."""
    from ml.events import EventError, parse_label, parse_transaction
    from streaming.kafka_io import encode
    from streaming.sources import Timeline

    df = tiny.head(300).copy()
    for c in ("transaction_id", "customer_id"):
        df[c] = df[c].astype(str)
    df["tx_fraud"] = df["tx_fraud"].astype(float)
    df["tx_amount"] = df["tx_amount"].astype(float)
    edits = {3: ("tx_fraud", 2.0), 4: ("tx_fraud", -1.0), 5: ("tx_fraud", 0.6), 6: ("transaction_id", "  "),
             7: ("customer_id", "c\u00e9"), 8: ("customer_id", "a\u2028b"), 9: ("tx_amount", 1.5e308),
             10: ("tx_datetime", pd.Timestamp("1999-12-31")), 11: ("label_time", pd.NaT),
             12: ("transaction_id", "y" * 65)}
    for row, (col, value) in edits.items():
        df.loc[row, col] = value
    tl = Timeline(df)
    untrusted = 0
    refused: dict[tuple[str, str], object] = {}
    for i in range(len(tl)):
        topic, value, trusted = tl.event(i)
        parse = parse_transaction if topic == "transactions" else parse_label
        if trusted:
            assert parse(value).__dict__ == value
            assert parse(encode(value)).__dict__ == value
            continue
        untrusted += 1
        verdicts = []
        for form in (value, encode(value)):
            try:
                verdicts.append(parse(form).__dict__)
            except EventError as e:
                verdicts.append(e.reason)
        assert verdicts[0] == verdicts[1]
        refused[topic, str(value["transaction_id"])[:8]] = verdicts[0]
    # 6 transactions (the non-ASCII id among them: the parser decides it) and 6 labels (2, -1, 0.6, the
    # whitespace id, the long id, no label_time)
    assert untrusted == 6 + 6
    ids = df["transaction_id"]
    assert isinstance(refused["transactions", ids[7]], dict)  # "cé" is a valid customer id
    assert "format or separator" in refused["transactions", ids[8]]
    for row in (3, 4, 5):
        assert "must be 0 or 1" in refused["labels", ids[row]]
    assert "label_time" in refused["labels", ids[11]]


# ----------------------------------------------------------------------------------------------- replay

def test_replay_reads_frames_and_files_alike(tiny: pd.DataFrame, tmp_path: Path) -> None:
    """One table as a pandas frame, a polars frame, a Parquet and a CSV file: the same events in the same
    order (a CSV's text parsed as the frame holds it); --start/--end cut the file in the scan."""
    from datetime import datetime

    import polars as pl

    from streaming.kafka_io import encode
    from streaming.sources import Timeline, as_polars, load_transactions

    def events(frame) -> list[tuple[str, bytes, bool]]:
        return [(topic, encode(value), trusted) for topic, value, trusted in Timeline(frame).iter_events()]

    table = as_polars(tiny)
    table.write_parquet(tmp_path / "tx.parquet")
    table.write_csv(tmp_path / "tx.csv")
    ref = events(tiny)
    assert len(ref) > len(tiny) and all(trusted for *_, trusted in ref)
    assert events(table) == ref
    assert events(load_transactions(tmp_path / "tx.parquet")) == ref
    assert events(load_transactions(tmp_path / "tx.csv")) == ref
    lo, hi = datetime(2018, 4, 3), datetime(2018, 4, 5, 12)
    expected = table.filter((pl.col("tx_datetime") >= lo) & (pl.col("tx_datetime") < hi))["transaction_id"]
    for name in ("tx.parquet", "tx.csv"):
        cut = load_transactions(tmp_path / name, start="2018-04-03", end="2018-04-05T12:00")
        assert cut["transaction_id"].to_list() == expected.to_list() and len(expected) > 0


def test_replay_dead_letters_bad_labels_and_whitespace_ids(tiny: pd.DataFrame, tmp_path: Path) -> None:
    """Labels 2, -1 and 0.6 are refused as in Kafka mode (not learnt as fraud); whitespace ids too."""
    from ml.online.factory import make_store
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    df = tiny.copy()
    df["transaction_id"] = df["transaction_id"].astype(str)
    df["customer_id"] = df["customer_id"].astype(str)
    df["tx_fraud"] = df["tx_fraud"].astype(float)
    bad_labels = {3: 2.0, 4: -1.0, 5: 0.6}
    for row, value in bad_labels.items():
        df.loc[row, "tx_fraud"] = value
    df.loc[6, "transaction_id"] = "   "
    df.loc[7, "customer_id"] = "\t"
    settings = _settings(tmp_path)
    w = Worker(ReplaySource(df), Sink(tmp_path / "out"), make_store(settings), settings, restore=False)
    stats = w.run()
    dead = _dead_letters(tmp_path / "out" / "dead_letter.jsonl")
    label_dead = {d["payload"]: d["reason"] for d in dead if d["source_topic"] == "labels"}
    for row in bad_labels:
        reasons = [r for p, r in label_dead.items() if json.loads(p)["transaction_id"] == df.loc[row,
                                                                                                 "transaction_id"]]
        assert reasons and "tx_fraud" in reasons[0] and "must be 0 or 1" in reasons[0]
    tx_dead = [d for d in dead if d["source_topic"] == "transactions"]
    assert {"transaction_id", "customer_id"} == {d["reason"].split(":")[1].strip() for d in tx_dead}
    assert all("whitespace" in d["reason"] for d in tx_dead)
    assert any("transaction_id" in r and "whitespace" in r for r in label_dead.values())
    # Learnt: every label but the 3 refused ones, the whitespace id's and the bad customer row's (its
    # transaction was refused); frauds learnt are the genuine ones only.
    assert stats.transactions == len(df) - 2
    assert stats.labels_learned == w.model.n_learned == len(df) - 5
    ok = ~df.index.isin([3, 4, 5, 6, 7])
    assert w.model.n_frauds == int((df.loc[ok, "tx_fraud"] == 1).sum())


@pytest.mark.redis
def test_poisoned_store_state_dead_letters_the_event_not_the_worker(tmp_path: Path) -> None:
    """Amounts of 1.5e308 already in Redis (written past the contract, as the attack did through the
    service) make the features of that customer overflow: those transactions are dead-lettered with the
    reason, the others are scored, and the worker does not crash."""
    from ml.features.per_transaction import TxEvent, to_us
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    store = private_redis_store("stream-poison")
    try:
        t0 = datetime(2018, 4, 1, 9)
        ids = {"customer_id": "victim", "terminal_id": "k9"}
        store.process([TxEvent(f"p{i}", to_us(t0) + i, ids, 1.5e308, t0) for i in range(2)])
        df = pd.DataFrame({
            "transaction_id": ["a", "b", "c"], "customer_id": ["victim", "fine", "fine"],
            "terminal_id": ["k1", "k2", "k2"], "tx_amount": [10.0, 20.0, 30.0],
            "tx_datetime": pd.to_datetime(["2018-04-01 10:00", "2018-04-01 10:01", "2018-04-01 10:02"]),
        })
        settings = _settings(tmp_path, "redis")
        sink = Sink(tmp_path / "out", keep_scores=True)
        stats = Worker(ReplaySource(df), sink, store, settings, restore=False).run()
        dead = _dead_letters(tmp_path / "out" / "dead_letter.jsonl")
        assert [json.loads(d["payload"])["transaction_id"] for d in dead] == ["a"]
        assert dead[0]["reason"].startswith("features: OverflowError") and dead[0]["offset"] is not None
        assert [s["transaction_id"] for s in sink.scores] == ["b", "c"] and stats.transactions == 2
    finally:
        _clear(store)


def test_store_batch_failure_finds_the_culprit_and_store_outage_stops(tiny: pd.DataFrame,
                                                                     tmp_path: Path) -> None:
    """A store call that fails while the store is up is retried event by event: only the event at fault is
    dead-lettered, and the state equals a run without it. A store that is down stops the worker instead
    (good events are never dead-lettered for an outage)."""
    from ml.online.factory import make_store
    from ml.online.store import StoreUnavailable
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    culprit = str(tiny.loc[50, "transaction_id"])

    def failing(store, when):
        real = store.process

        def process(events, write=True, read=True):
            if when(events):
                raise ValueError("the store refused the batch")
            return real(events, write=write, read=read)

        store.process = process
        return store

    settings = _settings(tmp_path / "a")
    store = failing(make_store(settings), lambda evs: any(getattr(e, "transaction_id", "") == culprit
                                                           and type(e).__name__ == "TxEvent" for e in evs))
    sink = Sink(tmp_path / "a" / "out")
    w = Worker(ReplaySource(tiny), sink, store, settings, restore=False)
    stats = w.run()
    dead = _dead_letters(tmp_path / "a" / "out" / "dead_letter.jsonl")
    tx_dead = [d for d in dead if d["source_topic"] == "transactions"]
    assert len(tx_dead) == 1 and json.loads(tx_dead[0]["payload"])["transaction_id"] == culprit
    assert tx_dead[0]["reason"] == "online store: ValueError | the store refused the batch"
    assert stats.transactions == len(tiny) - 1

    ref_settings = _settings(tmp_path / "b")
    ref = Worker(ReplaySource(tiny.drop(index=50)), Sink(), make_store(ref_settings), ref_settings,
                 restore=False)
    ref.run()
    assert model_state(w.model) == model_state(ref.model)

    down_settings = _settings(tmp_path / "c")
    down = failing(make_store(down_settings), lambda evs: True)

    def unreachable() -> None:
        raise StoreUnavailable("redis at test: connection refused")

    down.ping = unreachable
    sink = Sink(tmp_path / "c" / "out")
    with pytest.raises(ValueError, match="refused the batch"):
        Worker(ReplaySource(tiny), sink, down, down_settings, restore=False).run()
    assert sink.n_dead == 0


@pytest.mark.redis
def test_label_backlog_goes_to_the_store_in_chunks(tiny: pd.DataFrame, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels buffered until the end (a backlog, as after a restart) reach the real Redis store in calls of
    at most ``STORE_CHUNK`` events; the outcome equals the one-call run."""
    from ml.online.store import Label
    from streaming.sources import ReplaySource
    from streaming.worker import Sink, Worker

    df = tiny.copy()
    df["label_time"] = df["tx_datetime"].max() + pd.Timedelta(days=40)  # every label after every transaction
    runs = {}
    for name, chunk in (("chunked", 300), ("whole", 1_000_000)):
        store = private_redis_store(f"stream-chunk-{name}")
        calls: list[int] = []
        real = store.process

        def process(events, write=True, read=True, real=real, calls=calls):
            calls.append(sum(type(e) is Label for e in events))
            return real(events, write=write, read=read)

        store.process = process
        monkeypatch.setattr("streaming.worker.STORE_CHUNK", chunk)
        try:
            settings = _settings(tmp_path / name, "redis")
            w = Worker(ReplaySource(df), Sink(), store, settings, restore=False)
            stats = w.run()
            runs[name] = (calls, stats.labels_learned, model_state(w.model))
        finally:
            _clear(store)
    calls, learned, state = runs["chunked"]
    with_labels = [n for n in calls if n]
    assert learned == len(df) and sum(with_labels) == len(df)
    assert max(with_labels) <= 300 and len(with_labels) >= -(-len(df) // 300)
    assert [n for n in runs["whole"][0] if n] == [len(df)]
    assert state == runs["whole"][2]


# ------------------------------------------------------------------------------------------------ kafka

@pytest.mark.kafka
@pytest.mark.redis
def test_kafka_poison_messages_dead_lettered_and_worker_restarts(broker, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """On the real broker with the real Redis store: a year-1 date, a 1.5e308 amount, a 1,000,000-character
    id, label 2 and non-JSON are each dead-lettered with their reason (the payload bounded), the good events
    after them are processed, and a restart from the checkpoint goes on without crashing."""
    from confluent_kafka import Producer

    from ml.events import MAX_DEAD_PAYLOAD
    from streaming.kafka_io import ensure_topics, producer_config, read_topic
    from streaming.sources import KafkaSource
    from streaming.worker import KafkaSink, Worker

    caplog.set_level(logging.DEBUG, logger="streaming.worker")
    ensure_topics(broker.bootstrap)
    p = Producer(producer_config(broker.bootstrap, **{"message.max.bytes": 4_000_000}))

    def send(topic: str, value: dict | bytes) -> None:
        p.produce(topic, value if isinstance(value, bytes) else json.dumps(value).encode())

    label = {"transaction_id": "t1", "tx_fraud": 1, "label_time": "2018-04-08T10:00:00"}
    send("transactions", GOOD_TX)
    send("transactions", GOOD_TX | {"transaction_id": "t-y1", "tx_datetime": "0001-01-01T00:00:00"})
    send("transactions", GOOD_TX | {"transaction_id": "t-big", "tx_amount": 1.5e308})
    send("transactions", GOOD_TX | {"transaction_id": "x" * 1_000_000})
    send("transactions", b"\x00{not json")
    send("transactions", GOOD_TX | {"transaction_id": "t2", "tx_datetime": "2018-04-01T11:00:00"})
    send("labels", label | {"tx_fraud": 2})
    send("labels", label | {"label_time": "0001-01-01T00:00:00+01:00"})
    send("labels", label)
    assert p.flush(30) == 0

    store = private_redis_store("stream-kafka-poison")
    settings = _settings(tmp_path, "redis")
    try:
        w = Worker(KafkaSource(broker.bootstrap), KafkaSink(broker.bootstrap), store, settings, restore=False)
        try:
            stats = w.run(idle_timeout=3)
        finally:
            w.close()
        assert stats.transactions == 2 and stats.labels_learned == 1 and stats.dead_letters == 6
        dead = {(d["source_topic"], d["offset"]): d for d in read_topic(broker.bootstrap, "dead-letter")}
        reasons = {k: d["reason"] for k, d in dead.items()}
        assert "tx_datetime" in reasons["transactions", 1] and "2000-01-01" in reasons["transactions", 1]
        assert "tx_amount" in reasons["transactions", 2] and "FRAUD_MAX_AMOUNT" in reasons["transactions", 2]
        assert "transaction_id" in reasons["transactions", 3] and "64" in reasons["transactions", 3]
        assert reasons["transactions", 4].startswith("not JSON")
        assert "tx_fraud" in reasons["labels", 0] and "label_time" in reasons["labels", 1]
        huge = dead["transactions", 3]
        assert huge["truncated"] and huge["payload_size"] > 1_000_000
        assert len(huge["payload"]) <= MAX_DEAD_PAYLOAD
        assert json.loads(dead["transactions", 2]["payload"])["tx_amount"] == 1.5e308  # the original value
        scores = read_topic(broker.bootstrap, "scores")
        assert sorted(s["transaction_id"] for s in scores) == ["t1", "t2"]
        # The log names the events (topic, partition, offset) and the fault, never their content.
        assert "transactions:0@3" in caplog.text
        assert "x" * 64 not in caplog.text and "t-big" not in caplog.text

        # More poison and a good event after the restart: the worker resumes from its checkpoint.
        send("transactions", GOOD_TX | {"transaction_id": "t-y1b", "tx_datetime": "0001-01-01T00:00:00"})
        send("transactions", GOOD_TX | {"transaction_id": "t3", "tx_datetime": "2018-04-01T12:00:00"})
        assert p.flush(30) == 0
        w = Worker(KafkaSource(broker.bootstrap), KafkaSink(broker.bootstrap), store, settings)
        try:
            stats = w.run(idle_timeout=3)
        finally:
            w.close()
        assert stats.transactions == 1 and stats.dead_letters == 1
        assert w.position == {"transactions:0": 8, "labels:0": 3}
        scores = read_topic(broker.bootstrap, "scores")
        assert sorted({s["transaction_id"] for s in scores}) == ["t1", "t2", "t3"]
    finally:
        _clear(store)


# --------------------------------------------------------------------------------------------- security

def test_kafka_security_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.settings import Settings
    from streaming.kafka_io import consumer_config, producer_config
    from streaming.kafka_io import security_config as from_settings

    def security_config(env: dict[str, str]) -> dict[str, str]:  # these variables as the settings
        return from_settings(Settings(**{k.removeprefix("FRAUD_").lower(): v for k, v in env.items()}))

    assert security_config({}) == {"security.protocol": "PLAINTEXT"}
    env = {"FRAUD_KAFKA_SASL_USERNAME": "svc", "FRAUD_KAFKA_SASL_PASSWORD": "s3cret",
           "FRAUD_KAFKA_SASL_MECHANISM": "scram-sha-512", "FRAUD_KAFKA_SSL_CA": "/etc/ca.pem"}
    assert security_config(env) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                    "sasl.username": "svc", "sasl.password": "s3cret",
                                    "ssl.ca.location": "/etc/ca.pem"}
    assert security_config({"FRAUD_KAFKA_SECURITY_PROTOCOL": "ssl", "FRAUD_KAFKA_SSL_CERT": "c.pem",
                            "FRAUD_KAFKA_SSL_KEY": "k.pem"}) == {
        "security.protocol": "SSL", "ssl.certificate.location": "c.pem", "ssl.key.location": "k.pem"}
    for bad, match in (({"FRAUD_KAFKA_SECURITY_PROTOCOL": "TLS"}, "one of"),
                       ({"FRAUD_KAFKA_SASL_USERNAME": "svc"}, "PASSWORD"),
                       ({"FRAUD_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "FRAUD_KAFKA_SASL_PASSWORD": "s3cret"},
                        "SASL credentials"),
                       ({"FRAUD_KAFKA_SSL_CA": "/etc/ca.pem"}, "TLS files"),
                       (env | {"FRAUD_KAFKA_SASL_MECHANISM": "GSSAPI"}, "MECHANISM")):
        with pytest.raises(ValueError, match=match) as err:
            security_config(bad)
        assert "s3cret" not in str(err.value)
    # Every client is built from the same settings (producer, consumer; the admin client too).
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for cfg in (producer_config("b:9093"), consumer_config("b:9093", **{"group.id": "x"})):
        assert cfg["security.protocol"] == "SASL_SSL" and cfg["sasl.username"] == "svc"
        assert cfg["ssl.ca.location"] == "/etc/ca.pem" and cfg["bootstrap.servers"] == "b:9093"
    from confluent_kafka import Producer

    monkeypatch.delenv("FRAUD_KAFKA_SSL_CA")  # the file does not exist here
    Producer(producer_config("127.0.0.1:1")).flush(0)  # librdkafka accepts the settings as built


def test_cli_dates_must_be_iso(tmp_path: Path) -> None:
    """--start/--end end up in the warehouse query: anything but an ISO date is refused up front."""
    from click.testing import CliRunner

    from streaming.cli import publish, worker

    for command in (worker, publish):
        result = CliRunner().invoke(command, ["--from-warehouse", "--start", "2018-01-01' or 1=1 --"])
        assert result.exit_code == 2 and "expected an ISO date" in result.output
