"""The stream worker: online features -> champion XGBoost + River scores -> score events; labels -> River.

Per transaction: apply it to the online store (same spec and store as the scoring service) and get its
features as of its time, score with the frozen champion (micro-batched ``inplace_predict``) and with River,
emit a score event, and keep the feature vector (and both scores) until its label comes. Per label: buffer
it until the transaction stream's event time reaches its ``label_time`` (the point-in-time rule: a label
is known from ``label_time`` on, whatever order the two topics are read in), then record it in the store,
join it with the stored vector and let River learn on exactly what it predicted on; ADWIN detectors on
the error streams of both models emit drift events.

Delivery (see docs/streaming.md): the River model, detectors, join state, buffered labels, the in-process
store and the source offsets are checkpointed together (``streaming.checkpoint``). Outputs are flushed
before each checkpoint; after a crash the worker restarts from the checkpoint's offsets, so events after
it are processed again: the store applies them idempotently by ``transaction_id`` (Redis) or is restored
with the checkpoint (memory), River learns each label once, and score events may repeat (at least once;
consumers deduplicate by ``transaction_id``). A malformed event goes to the dead-letter topic with a reason.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ml.features.online import WINDOW_ENTITIES, to_us
from ml.features.spec import FEATURE_NAMES
from streaming import checkpoint as ckpt
from streaming.events import (
    TOPIC_DEAD_LETTER,
    TOPIC_DRIFT,
    TOPIC_LABELS,
    TOPIC_SCORES,
    TOPIC_TRANSACTIONS,
    DeadLetter,
    DriftEvent,
    EventError,
    decode_leniently,
    parse_label,
    parse_transaction,
)
from streaming.online_features import OnlineFeatures
from streaming.river_model import OnlineModel, make_model
from streaming.sources import EventSource, Message

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
# The Redis store keeps this much history beyond the longest window, so a transaction replayed after a
# crash (up to a checkpoint interval of event time late) still reads the window it read the first time.
REPLAY_MARGIN = timedelta(days=2)


def streaming_dir(settings) -> Path:
    return settings.data_dir / "streaming"


# ------------------------------------------------------------------------------------------- champion

@dataclass
class Champion:
    """The frozen batch champion, scoring micro-batches of feature dicts."""

    model: Any  # xgb.Booster or XGBClassifier
    feature_names: list[str]
    threshold: float = 0.5
    tag: str = ""

    def predict(self, rows: list[dict[str, float]]) -> np.ndarray:
        X = np.array([[r[n] for n in self.feature_names] for r in rows], dtype=np.float32)
        if hasattr(self.model, "predict_proba"):
            return self.model.predict_proba(X)[:, 1]
        return np.asarray(self.model.inplace_predict(X), dtype=np.float64)


def load_champion(settings=None, name: str = "fraud-champion") -> Champion | None:
    """The champion from the BentoML model store, or None when none is registered yet."""
    from ml.settings import export_tool_env

    settings = export_tool_env(settings)
    import bentoml

    try:
        bm = bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        return None
    model = bentoml.xgboost.load_model(bm)
    meta = bm.info.metadata or {}
    names = list(meta.get("feature_names") or FEATURE_NAMES)
    return Champion(model, names, float(meta.get("threshold", 0.5)), str(bm.tag))


# ---------------------------------------------------------------------------------------------- sinks

class Sink:
    """Where outputs go. The local sink writes dead letters to a JSONL file and counts scores."""

    def __init__(self, directory: Path | None = None, keep_scores: bool = False):
        self.directory = directory
        self.keep_scores = keep_scores
        self.scores: list[dict] = []
        self.n_scores = 0
        self.n_dead = 0

    def emit_scores(self, scores: list[dict]) -> None:
        self.n_scores += len(scores)
        if self.keep_scores:
            self.scores.extend(scores)

    def dead_letter(self, dl: DeadLetter) -> None:
        self.n_dead += 1
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / "dead_letter.jsonl", "a") as f:
                f.write(dl.model_dump_json() + "\n")

    def drift(self, ev: DriftEvent) -> None:
        pass  # the worker appends drift events to drift_events.jsonl itself

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class KafkaSink(Sink):
    """Scores, dead letters and drift events to their topics (batched produce)."""

    def __init__(self, bootstrap: str, keep_scores: bool = False):
        from confluent_kafka import Producer

        from streaming.kafka_io import ensure_topics, producer_config

        super().__init__(None, keep_scores)
        ensure_topics(bootstrap)
        self.producer = Producer(producer_config(bootstrap, **{"linger.ms": 2}))
        self._failed = 0

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failed += 1
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def _produce(self, topic: str, value: bytes, key: str | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def emit_scores(self, scores: list[dict]) -> None:
        super().emit_scores(scores)
        for s in scores:
            self._produce(TOPIC_SCORES, json.dumps(s, separators=(",", ":")).encode(), s["transaction_id"])
        self.producer.poll(0)

    def dead_letter(self, dl: DeadLetter) -> None:
        self.n_dead += 1
        self._produce(TOPIC_DEAD_LETTER, dl.model_dump_json().encode(), None)

    def drift(self, ev: DriftEvent) -> None:
        self._produce(TOPIC_DRIFT, ev.model_dump_json().encode(), ev.stream)

    def flush(self) -> None:
        left = self.producer.flush(30)
        if left or self._failed:
            raise RuntimeError(f"kafka: {left} undelivered, {self._failed} failed; not checkpointing")

    def close(self) -> None:
        self.producer.flush(30)


# --------------------------------------------------------------------------------------------- worker

@dataclass
class WorkerStats:
    transactions: int = 0
    labels_received: int = 0
    labels_learned: int = 0
    duplicate_labels: int = 0
    duplicate_transactions: int = 0
    dead_letters: int = 0
    drift_events: int = 0
    checkpoints: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def events(self) -> int:
        return self.transactions + self.labels_received + self.dead_letters

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([math.nan])
        return {
            "transactions": self.transactions, "labels_received": self.labels_received,
            "labels_learned": self.labels_learned, "duplicate_labels": self.duplicate_labels,
            "duplicate_transactions": self.duplicate_transactions, "dead_letters": self.dead_letters,
            "drift_events": self.drift_events, "checkpoints": self.checkpoints,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events / self.seconds, 1) if self.seconds else None,
            "p50_ms": float(np.nanpercentile(lat, 50)), "p99_ms": float(np.nanpercentile(lat, 99)),
        }


def build_store(settings, redis_prefix: str | None = None):
    """The configured online store; Redis keeps ``REPLAY_MARGIN`` more history (see above)."""
    from streaming.online_store import MemoryStore, RedisStore

    if settings.online_store == "memory":
        return MemoryStore()
    if settings.online_store == "redis":
        entities = {e: lb + REPLAY_MARGIN for e, lb in WINDOW_ENTITIES.items()}
        kwargs = {"prefix": redis_prefix} if redis_prefix else {}
        return RedisStore(settings.redis_url, entities=entities, **kwargs)
    raise ValueError(f"unknown online store {settings.online_store!r} (expected 'memory' or 'redis')")


class Worker:
    def __init__(self, source: EventSource, sink: Sink, store, settings, champion: Champion | None = None,
                 model: OnlineModel | None = None, checkpoint_dir: Path | None = None,
                 checkpoint_every: int = 50_000, checkpoint_interval_s: float = 10.0,
                 pending_ttl: timedelta = timedelta(days=30), batch_size: int = 500,
                 restore: bool = True):
        self.source, self.sink, self.settings = source, sink, settings
        self.features = OnlineFeatures(store)
        self._external_store = ckpt.snapshot_store(store) is None
        self.champion = champion
        self.checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else ckpt.river_dir(settings)
        self.checkpoint_every, self.checkpoint_interval_s = checkpoint_every, checkpoint_interval_s
        self.pending_ttl_us = to_us(pending_ttl)
        self.batch_size = batch_size
        self.drift_file = streaming_dir(settings) / "drift_events.jsonl"
        self.stats = WorkerStats()
        self.model = model or make_model()
        self.position: dict[str, int] = {}
        # tx id -> [t_us, feature tuple, river p, xgb p, learned]
        self.pending: dict[str, list] = {}
        self.label_heap: list[tuple[int, str, int]] = []  # (label_time_us, tx id, tx_fraud)
        self.orphans: dict[str, tuple[int, int]] = {}  # released labels whose transaction is not seen yet
        self.watermark_us = 0  # latest transaction event time processed
        self.label_watermark_us = 0  # latest label time received
        # Transactions read but held until every label known by their time has been read (Kafka reads the
        # two topics in no fixed order). Not checkpointed: the offsets stop before them, so they are re-read.
        self.backlog: deque[tuple[Message, dict | None, int, str | None]] = deque()
        self.seq = 0
        self._since_ckpt = 0
        self._ckpt_wall = time.monotonic()
        self._ckpt_event_us = 0
        if restore:
            self._restore()

    # -- checkpointing
    def _restore(self) -> None:
        c = ckpt.load(self.checkpoint_dir)
        if c is None:
            return
        self.model, self.position, self.seq = c.model, c.position, c.seq
        st = c.state
        self.pending, self.label_heap, self.orphans = st["pending"], st["label_heap"], st["orphans"]
        self.watermark_us = self._ckpt_event_us = st["watermark_us"]
        ckpt.restore_store(self.features.store, st.get("store"))
        self.source.seek(self.position)
        log.info("restored checkpoint %d at %s", self.seq, self.position)

    def checkpoint(self) -> None:
        self.sink.flush()  # outputs of every event before the checkpoint are delivered first
        self._prune()
        self.seq += 1
        state = {"pending": self.pending, "label_heap": self.label_heap, "orphans": self.orphans,
                 "watermark_us": self.watermark_us, "store": ckpt.snapshot_store(self.features.store)}
        stats = {k: v for k, v in self.stats.summary().items() if not k.endswith("_ms")}
        head = ckpt.Checkpoint(self.model, dict(self.position), state, stats, self.seq)
        ckpt.save(self.checkpoint_dir, head)
        if hasattr(self.source, "commit"):
            self.source.commit(self.position)
        self.stats.checkpoints += 1
        self._since_ckpt = 0
        self._ckpt_wall = time.monotonic()
        self._ckpt_event_us = self.watermark_us

    def _checkpoint_due(self) -> bool:
        return (self._since_ckpt >= self.checkpoint_every
                or time.monotonic() - self._ckpt_wall >= self.checkpoint_interval_s
                # Redis: bound the event time a replay after a crash may re-read (REPLAY_MARGIN)
                or (self._external_store and self.watermark_us - self._ckpt_event_us >= DAY_US))

    def _prune(self) -> None:
        horizon = self.watermark_us - self.pending_ttl_us
        while self.pending:
            k = next(iter(self.pending))
            if self.pending[k][0] >= horizon:
                break
            del self.pending[k]
        for tid, (lt, fraud) in list(self.orphans.items()):
            if lt < horizon:
                del self.orphans[tid]
                self._dead(TOPIC_LABELS, None, None, {"transaction_id": tid, "tx_fraud": fraud},
                           "label for a transaction this worker never saw")

    # -- main loop
    def run(self, max_events: int | None = None, idle_timeout: float | None = None,
            drain_at_end: bool = True) -> WorkerStats:
        """Process until the source is exhausted, ``idle_timeout`` s pass idle, or ``max_events`` are done."""
        t0 = time.perf_counter()
        idle_since = time.monotonic()
        done = 0
        # Fault injection for the crash tests: SIGKILL ourselves after N events (no cleanup, no flush).
        kill_after = int(os.environ.get("FRAUD_FAULT_KILL_AFTER_EVENTS", "0") or 0)
        try:
            while max_events is None or done < max_events:
                n = self.batch_size if max_events is None else min(self.batch_size, max_events - done)
                msgs = self.source.poll(n, timeout=0.05)
                if msgs:
                    self.process(msgs)
                    done += len(msgs)
                    if kill_after and done >= kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    self._since_ckpt += len(msgs)
                    idle_since = time.monotonic()
                elif self.source.exhausted or (idle_timeout is not None
                                               and time.monotonic() - idle_since >= idle_timeout):
                    break
                if self._checkpoint_due():
                    self.checkpoint()
            if drain_at_end and (self.source.exhausted or idle_timeout is not None):
                self.drain_labels()
            self.checkpoint()
        finally:
            self.stats.seconds += time.perf_counter() - t0
        return self.stats

    def drain_labels(self) -> None:
        """Release every held transaction and buffered label (end of a finite stream)."""
        self._release(final=True)
        ops: list = []
        while self.label_heap:
            ops.append(("label", heapq.heappop(self.label_heap)))
        self._execute(ops)

    def process(self, msgs: list[Message]) -> None:
        backlog = self.backlog
        for m in msgs:
            try:
                if m.topic == TOPIC_TRANSACTIONS:
                    tx = m.value if m.trusted else dict(parse_transaction(m.value).__dict__)
                    backlog.append((m, tx, to_us(tx["tx_datetime"]), None))
                    continue
                if m.topic == TOPIC_LABELS:
                    lab = m.value if m.trusted else parse_label(m.value).__dict__
                    self.stats.labels_received += 1
                    lt = to_us(lab["label_time"])
                    heapq.heappush(self.label_heap, (lt, str(lab["transaction_id"]), int(lab["tx_fraud"])))
                    if lt > self.label_watermark_us:
                        self.label_watermark_us = lt
                else:
                    raise EventError(f"unexpected topic {m.topic!r}")
            except EventError as e:
                if m.topic == TOPIC_TRANSACTIONS:  # keeps its place so offsets advance in order
                    backlog.append((m, None, 0, e.reason))
                    continue
                self._dead(m.topic, m.partition, m.offset, m.value, e.reason)
            self.position[m.position_key] = m.offset + 1
        self._release(final=False)

    def _release(self, final: bool) -> None:
        """Process held transactions whose time every label stream has passed (all of them if ``final``)."""
        ops: list = []  # ("tx", tx, emit ts, t_us) | ("label", (label_us, id, fraud)), in processing order
        heap, backlog = self.label_heap, self.backlog
        caught_up = final or self.source.labels_caught_up()
        while backlog:
            m, tx, t_us, reason = backlog[0]
            if reason is None and not caught_up and t_us >= self.label_watermark_us:
                break  # a label known at t_us may still be on its way
            backlog.popleft()
            self.position[m.position_key] = m.offset + 1
            if reason is not None:
                self._dead(m.topic, m.partition, m.offset, m.value, reason)
                continue
            while heap and heap[0][0] <= t_us:  # labels known by now come first
                ops.append(("label", heapq.heappop(heap)))
            ops.append(("tx", tx, m.ts, t_us))
            if t_us > self.watermark_us:
                self.watermark_us = t_us
        self._execute(ops)

    def _execute(self, ops: list) -> None:
        i = 0
        while i < len(ops):
            j = i
            kind = ops[i][0]
            while j < len(ops) and ops[j][0] == kind:
                j += 1
            if kind == "tx":
                self._transactions(ops[i:j])
            else:
                self._labels([op[1] for op in ops[i:j]])
            i = j

    def _transactions(self, ops: list) -> None:
        txs = [op[1] for op in ops]
        feats = self.features.score_many(txs)
        xgb = self.champion.predict(feats) if self.champion is not None else None
        thr = self.champion.threshold if self.champion is not None else None
        scores = []
        pending, names, predict = self.pending, FEATURE_NAMES, self.model.predict
        for k, (op, f) in enumerate(zip(ops, feats, strict=True)):
            tx, ts, t_us = op[1], op[2], op[3]
            tid = tx["transaction_id"]
            p = predict(f)
            px = float(xgb[k]) if xgb is not None else None
            prev = pending.get(tid)
            if prev is not None:
                self.stats.duplicate_transactions += 1
            else:
                pending[tid] = [t_us, tuple(f[n] for n in names), p, px, False]
                self.stats.transactions += 1
            now = time.time()
            scores.append({"transaction_id": tid, "tx_datetime": tx["tx_datetime"].isoformat(),
                           "river_score": p, "xgb_score": px,
                           "xgb_alert": (px >= thr) if px is not None else None, "scored_at": now})
            self.stats.latencies_ms.append((now - ts) * 1000.0)
            orphan = self.orphans.pop(tid, None)
            if orphan is not None:
                self._labels([(orphan[0], tid, orphan[1])])
        self.sink.emit_scores(scores)

    def _labels(self, labels: list[tuple[int, str, int]]) -> None:
        from ml.features.online import from_us

        self.features.apply_labels([(tid, fraud, from_us(lt)) for lt, tid, fraud in labels])
        names = FEATURE_NAMES
        for lt, tid, fraud in labels:
            rec = self.pending.get(tid)
            if rec is None:
                self.orphans[tid] = (lt, fraud)  # its transaction may still come (or gets dead-lettered)
                continue
            if rec[4]:
                self.stats.duplicate_labels += 1
                continue
            rec[4] = True
            when = from_us(lt)
            events = self.model.learn(dict(zip(names, rec[1], strict=True)), fraud, when, rec[2], rec[3])
            self.stats.labels_learned += 1
            for ev in events:
                self._drift(ev)

    def _drift(self, ev: DriftEvent) -> None:
        self.stats.drift_events += 1
        self.drift_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.drift_file, "a") as f:
            f.write(json.dumps({"time": ev.time.isoformat(), "detector": ev.detector, "stream": ev.stream,
                                "details": ev.details}) + "\n")
        self.sink.drift(ev)

    def _dead(self, topic: str, partition: int | None, offset: int | None, value: Any, reason: str) -> None:
        self.stats.dead_letters += 1
        self.sink.dead_letter(DeadLetter(source_topic=topic, partition=partition, offset=offset,
                                         reason=reason, payload=decode_leniently(value)))

    def close(self) -> None:
        self.sink.close()
        self.source.close()
        self.features.store.close()


def model_state(model: OnlineModel) -> dict[str, Any]:
    """A comparable fingerprint of a River model (crash tests): its learnt parameters and counters."""
    return {"n_learned": model.n_learned, "n_frauds": model.n_frauds, "drifts": model.drifts,
            # nan != nan: compare missing champion scores as None
            "recent": [(y, p, None if math.isnan(q) else q) for y, p, q in model.recent],
            "model": _canonical(model.model)}


def _canonical(obj: Any, depth: int = 0) -> Any:
    """Plain nested values of an object graph (pickle bytes also depend on object identity)."""
    if depth > 30:
        return repr(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {repr(k): _canonical(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0]))}
    if isinstance(obj, list | tuple | deque):
        return [_canonical(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__dict__"):
        return [type(obj).__name__, _canonical(vars(obj), depth + 1)]
    return repr(obj)


__all__ = ["Champion", "KafkaSink", "Sink", "Worker", "WorkerStats", "build_store", "load_champion",
           "model_state"]
