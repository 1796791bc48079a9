"""The stream worker: online features -> champion XGBoost + River scores -> score events; labels -> River.

Per transaction: apply it to the online store (same spec and store as the scoring service) and get its
features as of its time, score with the frozen champion (micro-batched ``inplace_predict``) and with River,
emit a score event, and keep the feature vector (and both scores) until its label comes. Per label: buffer
it until the transaction stream's event time reaches its ``label_time`` (the point-in-time rule: a label
is known from ``label_time`` on, whatever order the two topics are read in), then record it in the store,
join it with the stored vector and let River learn on exactly what it predicted on; ADWIN detectors on
the error streams of both models emit drift events.

Delivery (docs/streaming.md): the River model, detectors, join state, buffered labels, the in-process
store and the source offsets are checkpointed together (``ml.online.checkpoint``). Outputs are flushed
before each checkpoint; after a crash the worker restarts from the checkpoint's offsets, so events after
it are processed again: the store applies them idempotently by ``transaction_id`` (Redis) or is restored
with the checkpoint (memory), River learns each label once, and score events may repeat (at least once;
consumers deduplicate by ``transaction_id``). A malformed event goes to the dead-letter topic with a reason,
and so does any event whose processing fails on its own (found by retrying a failed batch event by event):
one event never stops the stream, while a store that is down does (the checkpoint resumes it).
"""

from __future__ import annotations

import gc
import heapq
import json
import logging
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ml.champion import Champion
from ml.events import (
    MAX_REASON,
    TOPIC_DEAD_LETTER,
    TOPIC_DRIFT,
    TOPIC_LABELS,
    TOPIC_SCORES,
    TOPIC_TRANSACTIONS,
    DeadLetter,
    DriftEvent,
    EventError,
    parse_label,
    parse_transaction,
)
from ml.features.per_transaction import WINDOW_ENTITIES, TxEvent, compute_features, from_us, to_us, tx_event
from ml.features.spec import FEATURE_NAMES
from ml.online import checkpoint as ckpt
from ml.online.checkpoint import OP_PENDING
from ml.online.features import OnlineFeatures
from ml.online.river_model import OnlineModel, make_model
from ml.online.store import Label
from streaming.sources import EventSource, Message

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
# A pending transaction's feature vector is kept packed (float64, spec order): a checkpoint pickles one
# bytes object per transaction instead of a tuple of floats (3x faster), and it takes a third of the memory.
VECTOR = struct.Struct(f"<{len(FEATURE_NAMES)}d")
LATENCY_WINDOW = 1_000_000
FOLD_MIN_OPS, FOLD_FACTOR = 500_000, 4  # change-log compaction (see Worker.checkpoint)
# Events per store call: a restart can release tens of thousands of buffered labels at once, and one Redis
# round trip must come back within the store's socket timeout.
STORE_CHUNK = 5_000


def streaming_dir(settings) -> Path:
    return settings.streaming_dir


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
    # Event-to-score latency of the most recent transactions (bounded: the worker may run for months).
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    @property
    def events(self) -> int:
        return self.transactions + self.labels_received + self.dead_letters

    def counters(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions, "labels_received": self.labels_received,
            "labels_learned": self.labels_learned, "duplicate_labels": self.duplicate_labels,
            "duplicate_transactions": self.duplicate_transactions, "dead_letters": self.dead_letters,
            "drift_events": self.drift_events, "checkpoints": self.checkpoints,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events / self.seconds, 1) if self.seconds else None,
        }

    def summary(self) -> dict[str, Any]:
        """Counters plus event-to-score latency percentiles (None before the first score)."""
        lat = np.fromiter(self.latencies_ms, dtype=np.float64, count=len(self.latencies_ms))
        pct = np.percentile(lat, [50, 99]).tolist() if len(lat) else [None, None]
        return self.counters() | {"p50_ms": pct[0], "p99_ms": pct[1]}


class Worker:
    def __init__(self, source: EventSource, sink: Sink, store, settings, champion: Champion | None = None,
                 model: OnlineModel | None = None, checkpoint_dir: Path | None = None,
                 checkpoint_every: int = 50_000, checkpoint_interval_s: float = 10.0,
                 pending_ttl: timedelta = timedelta(days=30), batch_size: int = 500,
                 restore: bool = True, fold_min_ops: int = FOLD_MIN_OPS, freeze_gc: bool = False):
        self.source, self.sink, self.settings = source, sink, settings
        self.features = OnlineFeatures(store)
        self._external_store = ckpt.snapshot_store(store) is None
        self.champion = champion
        self.checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else ckpt.river_dir(settings)
        self.checkpoint_every, self.checkpoint_interval_s = checkpoint_every, checkpoint_interval_s
        self.pending_ttl_us = to_us(pending_ttl)
        self.batch_size = batch_size
        self.fold_min_ops = fold_min_ops
        self.freeze_gc = freeze_gc
        self.drift_file = settings.drift_events_path
        self.stats = WorkerStats()
        self.model = model or make_model()
        self.position: dict[str, int] = {}
        # tx id -> [t_us, packed feature vector (VECTOR), river p, xgb p, learned]
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
        # Change log since the last checkpoint (see ml.online.checkpoint); store ops only for the in-process
        # store (Redis keeps its own state).
        self.changes = ckpt.ChangeLog()
        self._log_store = not self._external_store
        self._base_seq, self._deltas, self._ops_since_base = 0, [], 0
        self._initial_base: bytes | None = None
        self._writing: tuple[threading.Thread, dict[str, int]] | None = None
        self._write_error: BaseException | None = None
        if not (restore and self._restore()):
            # A fresh chain starts from the state as given (normally empty): base-0.
            self._initial_base = ckpt.base_bytes(self.pending, ckpt.snapshot_store(store))

    # -- checkpointing
    def _restore(self) -> bool:
        c = ckpt.load(self.checkpoint_dir)
        if c is None:
            return False
        self.model, self.position, self.seq = c.model, c.position, c.seq
        self._base_seq, self._deltas, self._ops_since_base = c.base, list(c.deltas), c.ops_since_base
        st = c.state
        self.pending, self.label_heap, self.orphans = st["pending"], st["label_heap"], st["orphans"]
        self.watermark_us = self._ckpt_event_us = st["watermark_us"]
        ckpt.restore_store(self.features.store, st.get("store"))
        self.source.seek(self.position)
        log.info("restored checkpoint %d at %s", self.seq, self.position)
        return True

    def checkpoint(self, wait: bool = False) -> None:
        """Take a checkpoint: flush outputs, hand the change log and the model to the writer thread.

        Outputs are flushed first, so every event before the checkpoint has its outputs delivered. The
        write (fsyncs, and now and then a fold of the log into a new base) runs off the event loop; one is
        in flight at most. If the previous one is still running, this checkpoint is put off (the log keeps
        growing) unless ``wait``. A crash before a write lands leaves the previous checkpoint, still valid.
        """
        if not wait and self._writing is not None and self._writing[0].is_alive():
            if not (self._external_store and self.watermark_us - self._ckpt_event_us >= DAY_US):
                return
        self.sink.flush()  # outputs of every event before the checkpoint are delivered first
        self._prune()
        self.wait_for_checkpoint()
        self.seq += 1
        self._ops_since_base += self.changes.n
        delta = self.changes.take()
        self._deltas.append(self.seq)
        # Fold the log into a new base once it outgrows the state (amortised O(1) per change; bounds the
        # replay a restart does). The fold runs on the writer thread, from the files.
        fold = self._ops_since_base >= max(self.fold_min_ops, FOLD_FACTOR * len(self.pending))
        small = {"label_heap": self.label_heap, "orphans": self.orphans, "watermark_us": self.watermark_us}
        head = ckpt.Checkpoint(self.model, dict(self.position), {}, self.stats.counters(), self.seq,
                               base=self._base_seq, deltas=self._deltas, ops_since_base=self._ops_since_base)
        job = ckpt.WriteJob(self.seq, ckpt.head_bytes(head, small), delta=delta, base=self._initial_base,
                            base_seq=self._base_seq, fold=fold, chain=(self._base_seq, tuple(self._deltas)))
        self._initial_base = None
        if fold:
            self._base_seq, self._deltas, self._ops_since_base = self.seq, [], 0
        self._writing = (threading.Thread(target=self._write, args=(job,), name="checkpoint-writer",
                                          daemon=True), dict(self.position))
        self._writing[0].start()
        self.stats.checkpoints += 1
        self._since_ckpt = 0
        self._ckpt_wall = time.monotonic()
        self._ckpt_event_us = self.watermark_us
        if wait:
            self.wait_for_checkpoint()
        if self.freeze_gc:
            # The state is millions of long-lived objects; a full GC pass over them stalls scoring for
            # hundreds of ms. Park what exists now in the permanent generation (still freed by reference
            # counting). Process-wide, so only where the worker owns the process (`fraud worker`).
            gc.freeze()

    def _write(self, job: ckpt.WriteJob) -> None:
        try:
            ckpt.write(self.checkpoint_dir, job)
        except BaseException as e:  # re-raised on the worker's thread by wait_for_checkpoint
            self._write_error = e

    def wait_for_checkpoint(self) -> None:
        """Block until the checkpoint being written is on disk; then record its offsets in the group."""
        if self._writing is None:
            return
        thread, position = self._writing
        thread.join()
        self._writing = None
        if self._write_error is not None:
            err, self._write_error = self._write_error, None
            raise RuntimeError(f"checkpoint write to {self.checkpoint_dir} failed") from err
        if hasattr(self.source, "commit"):
            self.source.commit(position)

    def _checkpoint_due(self) -> bool:
        return (self._since_ckpt >= self.checkpoint_every
                or time.monotonic() - self._ckpt_wall >= self.checkpoint_interval_s
                # Redis: bound the event time a replay after a crash may re-read (REPLAY_MARGIN)
                or (self._external_store and self.watermark_us - self._ckpt_event_us >= DAY_US))

    def pending_vectors(self) -> tuple[list[str], np.ndarray]:
        """Ids and feature matrix (spec order) of the transactions still held for their labels."""
        ids = list(self.pending)
        blob = b"".join(rec[1] for rec in self.pending.values())
        return ids, np.frombuffer(blob, dtype="<f8").reshape(len(ids), len(FEATURE_NAMES))

    def _prune(self) -> None:
        horizon = self.watermark_us - self.pending_ttl_us
        self.changes.append((ckpt.OP_PRUNE, horizon))
        ckpt.prune_pending(self.pending, horizon)
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
        try:
            while max_events is None or done < max_events:
                n = self.batch_size if max_events is None else min(self.batch_size, max_events - done)
                msgs = self.source.poll(n, timeout=0.05)
                if msgs:
                    self.process(msgs)
                    done += len(msgs)
                    self._since_ckpt += len(msgs)
                    idle_since = time.monotonic()
                elif self.source.exhausted or (idle_timeout is not None
                                               and time.monotonic() - idle_since >= idle_timeout):
                    break
                if self._checkpoint_due():
                    self.checkpoint()
            if drain_at_end and (self.source.exhausted or idle_timeout is not None):
                self.drain_labels()
            self.checkpoint(wait=True)
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
                    lt = to_us(lab["label_time"])
                    entry = (lt, str(lab["transaction_id"]), int(lab["tx_fraud"]))
                    self.stats.labels_received += 1
                    heapq.heappush(self.label_heap, entry)
                    if lt > self.label_watermark_us:
                        self.label_watermark_us = lt
                else:
                    raise EventError(f"unexpected topic {m.topic!r}")
            except Exception as e:  # whatever one event does, it is dead-lettered and the stream goes on
                reason = _reason(e, "reading")
                if m.topic == TOPIC_TRANSACTIONS:  # keeps its place so offsets advance in order
                    backlog.append((m, None, 0, reason))
                    continue
                self._dead(m.topic, m.partition, m.offset, m.value, reason)
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
            ops.append(("tx", tx, m, t_us))
            if t_us > self.watermark_us:
                self.watermark_us = t_us
        self._execute(ops)

    def _execute(self, ops: list) -> None:
        """Apply a run of transactions and labels in event order, with one store call and one champion call.

        The store sees every event in order (a label changes the fraud-rate features of the transactions
        after it); the frozen champion scores the whole run at once (its score does not depend on the
        order); River then predicts and learns in event order. The outcome is the same whatever the batch
        boundaries are, which is what makes a restart from a checkpoint land on the same state, and what
        lets a long run (a backlog of labels) go to the store in chunks of ``STORE_CHUNK`` events.

        An event that fails on its own (building it, the store call, its features, River's score) is
        dead-lettered and left out; the others go on.
        """
        if not ops:
            return
        chunk = STORE_CHUNK
        if len(ops) > chunk:
            for i in range(0, len(ops), chunk):
                self._execute(ops[i:i + chunk])
            return
        events: list = []
        kept: list = []
        for op in ops:
            try:
                if op[0] == "tx":
                    events.append(tx_event(op[1]))
                else:
                    lt, tid, fraud = op[1]
                    events.append(Label(tid, fraud, lt))
                kept.append(op)
            except Exception as e:
                self._dead_op(op, _reason(e, "reading"))
        ops = kept
        replies, failed = self._apply(events, read=True)
        if failed:
            for i, reason in failed.items():
                self._dead_op(ops[i], reason)
            ops = [op for i, op in enumerate(ops) if i not in failed]
            events = [ev for i, ev in enumerate(events) if i not in failed]
            replies = [r for i, r in enumerate(replies) if i not in failed]
        feats: list[dict[str, float]] = []
        vecs: list[bytes] = []
        pack, names = VECTOR.pack, FEATURE_NAMES
        kept = []
        for op, ev, st in zip(ops, events, replies, strict=True):
            if type(ev) is TxEvent:
                try:
                    f = compute_features(ev, st or {})
                    vecs.append(pack(*[f[n] for n in names]))  # every feature present and a number
                except Exception as e:
                    self._dead_op(op, _reason(e, "features"))
                    continue
                feats.append(f)
            kept.append(op)
        ops = kept
        champion = self.champion
        xgb = (champion.predict_spec(np.frombuffer(b"".join(vecs), "<f8").reshape(len(vecs), -1)).tolist()
               if champion is not None and vecs else None)
        thr = champion.threshold if champion is not None else None
        pending, predict, stats = self.pending, self.model.predict, self.stats
        log_change = self.changes.append
        scores: list[dict] = []
        late_labels: list[Label] = []
        latencies = stats.latencies_ms
        k = 0
        for op in ops:
            if op[0] != "tx":
                self._learn(*op[1])
                continue
            _, tx, m, t_us = op
            f, vec = feats[k], vecs[k]
            px = xgb[k] if xgb is not None else None
            k += 1
            tid = tx["transaction_id"]
            try:
                p = predict(f)
            except Exception as e:
                self._dead_op(op, _reason(e, "river"))
                continue
            if tid in pending:
                stats.duplicate_transactions += 1
            else:
                pending[tid] = [t_us, vec, p, px, False]
                log_change((OP_PENDING, tid, t_us, vec, p, px))
                stats.transactions += 1
            now = time.time()
            scores.append({"transaction_id": tid, "tx_datetime": tx["tx_datetime"].isoformat(),
                           "river_score": p, "xgb_score": px,
                           "xgb_alert": (px >= thr) if px is not None else None, "scored_at": now})
            latencies.append((now - m.ts) * 1000.0)
            orphan = self.orphans.pop(tid, None)
            if orphan is not None:  # its label came first: record it now that the transaction is known
                late_labels.append(Label(tid, orphan[1], orphan[0]))
                self._learn(orphan[0], tid, orphan[1])
        if late_labels:
            _, failed = self._apply(late_labels, read=False)
            for i, reason in failed.items():
                lab = late_labels[i]
                self._dead_op(("label", (lab.label_us, lab.transaction_id, lab.tx_fraud)), reason)
        self.sink.emit_scores(scores)

    def _apply(self, events: list, read: bool) -> tuple[list, dict[int, str]]:
        """The store's replies to ``events`` and the events it failed on ({index: reason}).

        One call for the run; if it fails while the store is up, the events go again one by one (writes
        are idempotent by transaction id, a label replaces itself) to find the ones at fault. A store that
        does not answer is not the events' fault: that error propagates (the worker stops, its checkpoint
        resumes it), so a Redis outage never dead-letters good events.
        """
        try:
            return self._store(events, read), {}
        except Exception as e:
            self._raise_unless_store_up(e)
            log.warning("store call of %d events failed (%s); retrying them one by one",
                        len(events), type(e).__name__)
        replies: list = []
        failed: dict[int, str] = {}
        for i, ev in enumerate(events):
            for attempt in (0, 1):  # a second try: one transient failure does not dead-letter an event
                try:
                    replies.append(self._store([ev], read)[0])
                    break
                except Exception as e:
                    self._raise_unless_store_up(e)
                    if attempt:
                        replies.append(None)
                        failed[i] = _reason(e, "online store")
        return replies, failed

    def _raise_unless_store_up(self, err: Exception) -> None:
        try:
            self.features.store.ping()
        except Exception:
            raise err from None

    def _store(self, events: list, read: bool) -> list:
        """Apply events to the online store in order, logging them when the store lives in the checkpoint.

        Logged after the call succeeds, so an event that failed never reaches the checkpoint (a restart
        replays the log)."""
        replies = self.features.store.process(events, write=True, read=read)
        if self._log_store:
            log_change, entities = self.changes.append, WINDOW_ENTITIES
            for ev in events:
                if type(ev) is TxEvent:
                    ids = tuple([ev.entities[e] for e in entities])
                    log_change((ckpt.OP_TX, ev.transaction_id, ev.t_us, ids, ev.amount))
                else:
                    log_change((ckpt.OP_LABEL, ev.transaction_id, ev.tx_fraud, ev.label_us))
        return replies

    def _learn(self, lt: int, tid: str, fraud: int) -> None:
        """Join a label (already recorded in the store) with the features its transaction was scored on."""
        rec = self.pending.get(tid)
        if rec is None:
            self.orphans[tid] = (lt, fraud)  # its transaction may still come (or gets dead-lettered)
            return
        if rec[4]:
            self.stats.duplicate_labels += 1
            return
        rec[4] = True
        self.changes.append((ckpt.OP_LEARNED, tid))
        events = self.model.learn(dict(zip(FEATURE_NAMES, VECTOR.unpack(rec[1]), strict=True)), fraud,
                                  from_us(lt), rec[2], rec[3])
        self.stats.labels_learned += 1
        for ev in events:
            self._drift(ev)

    def _drift(self, ev: DriftEvent) -> None:
        self.stats.drift_events += 1
        self.drift_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.drift_file, "a") as f:
            f.write(json.dumps({"id": ev.id, "time": ev.time.isoformat(), "detector": ev.detector,
                                "stream": ev.stream, "details": ev.details}) + "\n")
        self.sink.drift(ev)

    def _dead(self, topic: str, partition: int | None, offset: int | None, value: Any, reason: str) -> None:
        self.stats.dead_letters += 1
        # The log names the event and the kind of fault, never content (the dead letter carries it).
        log.debug("dead letter %s:%s@%s: %s", topic, partition, offset, reason.split(DETAIL_SEP, 1)[0])
        self.sink.dead_letter(DeadLetter.of(topic, partition, offset, value, reason))

    def _dead_op(self, op: tuple, reason: str) -> None:
        """Dead-letter one operation of ``_execute`` (a transaction message or a released label)."""
        if op[0] == "tx":
            m = op[2]
            self._dead(m.topic, m.partition, m.offset, m.value, reason)
        else:
            lt, tid, fraud = op[1]
            self._dead(TOPIC_LABELS, None, None, {"transaction_id": tid, "tx_fraud": fraud, "label_us": lt},
                       reason)

    def close(self) -> None:
        self.wait_for_checkpoint()
        self.sink.close()
        self.source.close()
        self.features.store.close()


DETAIL_SEP = " | "  # a dead letter's reason: what went wrong, then (unlogged) the error's own text


def _reason(e: BaseException, stage: str) -> str:
    """A dead letter's reason: the contract's reason (it never holds the value), else the stage and the
    error's type, then its text, which may quote the input (the dead letter keeps it, the log does not)."""
    if isinstance(e, EventError):
        return e.reason[:MAX_REASON]
    return f"{stage}: {type(e).__name__}{DETAIL_SEP}{e}"[:MAX_REASON]


__all__ = ["KafkaSink", "Sink", "Worker", "WorkerStats"]
