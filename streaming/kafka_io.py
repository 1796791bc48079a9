"""Kafka plumbing: topic creation, a batching producer, and an assign()-based consumer.

Topics (``ml.events``): ``transactions``, ``labels`` in; ``scores``, ``dead-letter``, ``drift`` out.
The worker assigns partitions itself and keeps offsets in its own checkpoint (with the River model and the
online store position), so it needs no consumer-group coordination; offsets are also committed to the group
``fraud-worker`` for lag monitoring only.

Every client (producer, consumer, admin) takes its connection settings from ``client_config``: the bootstrap
servers plus TLS/SASL from the environment (``security_config``), so a secured cluster needs no code change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from ml.events import (
    TOPIC_DEAD_LETTER,
    TOPIC_DRIFT,
    TOPIC_LABELS,
    TOPIC_SCORES,
    TOPIC_TRANSACTIONS,
)
from ml.settings import Settings, get_settings

ALL_TOPICS = (TOPIC_TRANSACTIONS, TOPIC_LABELS, TOPIC_SCORES, TOPIC_DEAD_LETTER, TOPIC_DRIFT)
GROUP_ID = "fraud-worker"


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def security_config(settings: Settings | None = None) -> dict[str, str]:
    """librdkafka's TLS/SASL settings from the settings (secrets come from there, never from code).

    ``FRAUD_KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL; default SASL_SSL when a
    SASL user is given, else PLAINTEXT), ``FRAUD_KAFKA_SASL_MECHANISM`` (default PLAIN),
    ``FRAUD_KAFKA_SASL_USERNAME`` / ``FRAUD_KAFKA_SASL_PASSWORD``, ``FRAUD_KAFKA_SSL_CA`` (CA file),
    ``FRAUD_KAFKA_SSL_CERT`` / ``FRAUD_KAFKA_SSL_KEY`` (client certificate, mutual TLS). Inconsistent settings
    raise ValueError (whose message never holds the password).
    """
    s = settings or get_settings()
    user, mechanism = s.kafka_sasl_username.strip(), s.kafka_sasl_mechanism.strip().upper()
    # not stripped: a password is what it is
    password = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password is not None else ""
    protocol = s.kafka_security_protocol.strip().upper() or ("SASL_SSL" if user or mechanism else "PLAINTEXT")
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"FRAUD_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}")
    cfg: dict[str, str] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        mechanism = mechanism or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"FRAUD_KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}")
        if not user or not password:
            raise ValueError(f"{protocol} needs FRAUD_KAFKA_SASL_USERNAME and FRAUD_KAFKA_SASL_PASSWORD")
        cfg |= {"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password}
    elif user or password or mechanism:
        raise ValueError(f"SASL credentials are set but FRAUD_KAFKA_SECURITY_PROTOCOL is {protocol}")
    tls = {"ssl.ca.location": s.kafka_ssl_ca.strip(), "ssl.certificate.location": s.kafka_ssl_cert.strip(),
           "ssl.key.location": s.kafka_ssl_key.strip()}
    if protocol.endswith("SSL"):
        cfg.update({k: v for k, v in tls.items() if v})
    elif any(tls.values()):
        raise ValueError(f"TLS files are set but FRAUD_KAFKA_SECURITY_PROTOCOL is {protocol}")
    return cfg


def client_config(bootstrap: str) -> dict:
    """What every client needs to reach the cluster: its address and its security settings."""
    return {"bootstrap.servers": bootstrap, "log_level": 3} | security_config()


def producer_config(bootstrap: str, **overrides) -> dict:
    # Batch produce: a few ms of linger turns single sends into batches (throughput); lz4 keeps them small.
    cfg = client_config(bootstrap) | {"linger.ms": 5, "batch.num.messages": 10000, "compression.type": "lz4",
                                      "queue.buffering.max.messages": 1_000_000, "enable.idempotence": False}
    cfg.update(overrides)
    return cfg


def consumer_config(bootstrap: str, **overrides) -> dict:
    cfg = client_config(bootstrap) | {"group.id": GROUP_ID, "enable.auto.commit": False,
                                      "auto.offset.reset": "earliest", "enable.partition.eof": False,
                                      "fetch.wait.max.ms": 5, "queued.min.messages": 20000}
    cfg.update(overrides)
    return cfg


def ensure_topics(bootstrap: str, topics: Sequence[str] = ALL_TOPICS, partitions: int = 1,
                  timeout: float = 10.0) -> None:
    """Create missing topics (an existing topic is fine)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(bootstrap))
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
    if not new:
        return
    for topic, fut in admin.create_topics(new, request_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise RuntimeError(f"cannot create topic {topic}: {e}") from e


def partitions_of(bootstrap: str, topic: str, timeout: float = 10.0) -> list[int]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient(client_config(bootstrap)).list_topics(topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise RuntimeError(f"topic {topic!r} not found on {bootstrap}")
    return sorted(t.partitions)


def _json_default(v):
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def encode(obj: dict) -> bytes:
    return json.dumps(obj, default=_json_default, separators=(",", ":")).encode()


def publish(producer, items: Iterable[tuple[str, bytes, bytes | None]]) -> int:
    """Produce (topic, value, key) items, serving delivery callbacks as the local queue fills."""
    n = 0
    for topic, value, key in items:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:  # local queue full: let librdkafka send, then retry
                producer.poll(0.05)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)
    return n


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark per partition, as the broker reports it.

    Kafka reports the next offset to be written; tansu (the local broker) reports the last record batch's
    base offset + 1, so with tansu this is a lower bound of the number of messages, not the count.
    """
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(consumer_config(bootstrap, **{"group.id": "fraud-inspect"}))
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in partitions_of(bootstrap, topic, timeout)}
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0, idle: float = 1.0) -> list[dict]:
    """Every message of a topic from the beginning, decoded as JSON (tests, small inspections).

    Reads until the high watermark is reached and then nothing more arrives for ``idle`` seconds (the
    watermark alone undercounts on tansu, see ``end_offsets``), or ``timeout`` passes.
    """
    import time

    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(bootstrap, topic, timeout)
    c = Consumer(consumer_config(bootstrap, **{"group.id": "fraud-inspect"}))
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[dict] = []
    want = sum(ends.values())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = c.consume(num_messages=10000, timeout=idle if len(out) >= want else 0.5)
            if not batch and len(out) >= want:
                break
            for m in batch:
                if m.error() is None:
                    out.append(json.loads(m.value()))
    finally:
        c.close()
    return out
