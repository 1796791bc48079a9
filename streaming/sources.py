"""Event sources behind one interface: embedded replay (default) and Kafka.

A source yields ``Message``s (transactions and labels) in batches and can be positioned: ``seek`` takes
the offsets the worker checkpointed, so a restarted worker reads on from exactly where its checkpoint is.

``ReplaySource`` turns a transaction table (from the warehouse or a CSV/Parquet file) into one time-ordered
stream: each transaction at its ``tx_datetime``, each label at its ``label_time`` (labels before
transactions at the same instant, as the feature spec's point-in-time rule reads them), optionally paced by
a speed-up factor (event time runs ``speedup`` times faster than wall time) or a fixed rate (events/s).
``fraud publish`` fills Kafka in that same order (``Timeline``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ml.contract import MAX_ID_LEN, limits, to_utc_naive
from ml.events import TOPIC_LABELS, TOPIC_TRANSACTIONS
from ml.features.spec import FEATURES_TABLE

REPLAY_PARTITION = "replay:0"


@dataclass(slots=True)
class Message:
    topic: str  # TOPIC_TRANSACTIONS | TOPIC_LABELS
    partition: int
    offset: int
    value: bytes | dict  # a dict from replay is already validated when ``trusted``
    ts: float  # wall-clock epoch seconds when the event was emitted (latency origin)
    trusted: bool = False
    stream: str = ""  # the offset's sequence when not the topic's partition (replay: one merged sequence)

    @property
    def position_key(self) -> str:
        return self.stream or f"{self.topic}:{self.partition}"


class EventSource(ABC):
    @abstractmethod
    def poll(self, max_messages: int = 1000, timeout: float = 0.1) -> list[Message]:
        """Up to ``max_messages`` messages; an empty list when none arrived within ``timeout``."""

    @abstractmethod
    def seek(self, position: dict[str, int]) -> None:
        """Continue from these next offsets (``"topic:partition" -> offset``)."""

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing left (a live Kafka source never is)."""
        return False

    def labels_caught_up(self) -> bool:
        """True when every label published so far has been read (so none can be late)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


# ---------------------------------------------------------------------------------------------- replay

def _bound(value: str | None, option: str) -> datetime | None:
    """An ISO date/time option as naive UTC (an offset is converted); a clear error when it is not one."""
    if not value:
        return None
    try:
        return to_utc_naive(datetime.fromisoformat(value))
    except ValueError:
        raise ValueError(f"{option} must be an ISO date or date-time (e.g. 2018-09-01)") from None


def load_transactions(path: Path | None = None, warehouse: Path | None = None,
                      start: str | None = None, end: str | None = None) -> pd.DataFrame:
    """Transactions (with tx_fraud, label_time when known) from a file or the warehouse.

    The warehouse is read through the features snapshot (``ml.data.warehouse``): the transactions of the last
    feature build, without holding the warehouse (a dbt build may run meanwhile)."""
    lo, hi = _bound(start, "--start"), _bound(end, "--end")
    if warehouse is not None:
        from ml.data.warehouse import features_connection, time_range

        where, params = time_range(lo, hi)
        sql = ("select transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud, "
               f"label_time from {FEATURES_TABLE}" + where)
        with features_connection(warehouse) as con:
            df = con.execute(sql, params).df()
    else:
        if path is None:
            raise ValueError("replay needs a file path or a warehouse")
        path = Path(path)
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
        if lo is not None:
            df = df[pd.to_datetime(df["tx_datetime"]) >= pd.Timestamp(lo)]
        if hi is not None:
            df = df[pd.to_datetime(df["tx_datetime"]) < pd.Timestamp(hi)]
    return df.reset_index(drop=True)


def _id_strings(col: pd.Series) -> np.ndarray:
    """Ids as strings, as the JSON path writes them ("" where missing: those rows are dead-lettered).

    An integer column with a missing value arrives as float; its ids are still written as integers.
    """
    if pd.api.types.is_float_dtype(col):
        whole = col.dropna()
        if (whole == np.floor(whole)).all():
            col = col.astype("Int64")
    out = col.astype(object).where(col.notna(), "")
    return np.array([v if isinstance(v, str) else str(v) for v in out], dtype=object)


def _ids_valid(ids: np.ndarray) -> np.ndarray:
    """Ids (``_id_strings``) that surely pass the contract's ``check_identifier``: 1..64 ASCII characters,
    no control characters, not all whitespace. A non-ASCII id is left to ``check_identifier`` itself."""
    s = pd.Series(ids, dtype=object)
    ok = (s.str.len() <= MAX_ID_LEN) & (s.str.strip() != "")
    ok &= s.map(str.isascii).astype(bool) & ~s.str.contains(r"[\x00-\x1f\x7f]", regex=True)
    return ok.fillna(False).to_numpy(bool)


def _in_time_range(t: np.ndarray) -> np.ndarray:
    """Times (datetime64[us]) within the contract's range (NaT is not)."""
    lim = limits()
    lo, hi = np.datetime64(lim.min_time, "us"), np.datetime64(lim.max_time(), "us")
    return ~np.isnat(t) & (t >= lo) & (t <= hi)


def _plain(v: object) -> object:
    """A cell as the JSON path would carry it (missing -> None, numpy scalars -> Python)."""
    if v is None or (not isinstance(v, str | bytes) and pd.isna(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


class Timeline:
    """The merged, time-ordered event list of a transaction table, held as columns (built once).

    Every event is validated exactly as a Kafka message is: a row whose normalised values surely pass the
    contract travels as a trusted dict (those checks run here on whole columns, so replay stays fast); any
    other row travels as it is, untrusted, and the worker parses it with the same functions as a Kafka
    message (``ml.events``), which accept it or dead-letter it with the reason.
    """

    def __init__(self, df: pd.DataFrame):
        n = len(df)
        tx_time = pd.to_datetime(df["tx_datetime"], errors="coerce").to_numpy("datetime64[us]")
        amount = pd.to_numeric(df["tx_amount"], errors="coerce").to_numpy("float64")
        self.ids = _id_strings(df["transaction_id"])
        self.customers = _id_strings(df["customer_id"])
        self.terminals = _id_strings(df["terminal_id"])
        id_ok = _ids_valid(self.ids)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(amount) & (amount >= 0) & (amount <= limits().max_amount)
        ok &= _in_time_range(tx_time)
        ok &= id_ok & _ids_valid(self.customers) & _ids_valid(self.terminals)
        self.amount = amount
        self.tx_time = tx_time
        self.ok = ok
        self.raw = df
        has_label = np.zeros(n, dtype=bool)
        label_ok = np.zeros(n, dtype=bool)
        label_time = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        fraud = np.zeros(n, dtype=np.int8)
        if "tx_fraud" in df.columns and "label_time" in df.columns:
            label_time = pd.to_datetime(df["label_time"], errors="coerce").to_numpy("datetime64[us]")
            f = pd.to_numeric(df["tx_fraud"], errors="coerce").to_numpy("float64")
            # A row has a label when it has a tx_fraud; a label outside the contract (not exactly 0/1, no or
            # a bad label_time, a bad id) travels untrusted so the worker dead-letters it with the reason.
            # A bad transaction's good label still travels: the worker dead-letters it ("never saw").
            has_label = df["tx_fraud"].notna().to_numpy(bool)
            label_ok = has_label & ((f == 0) | (f == 1)) & _in_time_range(label_time) & id_ok
            fraud = np.where(label_ok, f, 0).astype(np.int8)
        self.label_time, self.fraud, self.label_ok = label_time, fraud, label_ok
        # Event list: (time, rank, id) with rank 0 = label, 1 = transaction; a label known no later than its
        # own transaction (or has no label_time: NaT is the smallest int64) comes right after it (rank 2).
        tx_idx = np.arange(n)
        lab_idx = np.flatnonzero(has_label)
        t_tx = np.where(ok, tx_time, np.datetime64("1970-01-01")).astype("int64")
        t_lab = label_time[lab_idx].astype("int64")
        own = t_lab <= t_tx[lab_idx]
        times = np.concatenate([t_tx, np.where(own, t_tx[lab_idx], t_lab)])
        ranks = np.concatenate([np.ones(n, np.int8), np.where(own, 2, 0).astype(np.int8)])
        rows = np.concatenate([tx_idx, lab_idx])
        order = np.lexsort((self.ids[rows], ranks, times))
        self.kind = (ranks[order] == 0) | (ranks[order] == 2)  # True = label
        self.row = rows[order]
        self.time_us = times[order]

    def __len__(self) -> int:
        return len(self.row)

    def event(self, i: int) -> tuple[str, dict, bool]:
        """(topic, value, trusted) of event i."""
        r = int(self.row[i])
        if self.kind[i]:
            if not self.label_ok[r]:
                raw = self.raw.iloc[r]
                return TOPIC_LABELS, {"transaction_id": self.ids[r] or _plain(raw["transaction_id"]),
                                      "tx_fraud": _plain(raw["tx_fraud"]),
                                      "label_time": _plain(raw["label_time"])}, False
            return TOPIC_LABELS, {"transaction_id": self.ids[r], "tx_fraud": int(self.fraud[r]),
                                  "label_time": self.label_time[r].item()}, True
        if not self.ok[r]:
            raw = {k: _plain(v) for k, v in self.raw.iloc[r].to_dict().items()}
            # Ids as the good rows carry them (an integer column with a gap reads as float), so the reason
            # names what is actually wrong.
            for col, ids in (("transaction_id", self.ids), ("customer_id", self.customers),
                             ("terminal_id", self.terminals)):
                if ids[r] != "":
                    raw[col] = ids[r]
            return TOPIC_TRANSACTIONS, raw, False
        return TOPIC_TRANSACTIONS, {"transaction_id": self.ids[r], "tx_datetime": self.tx_time[r].item(),
                                    "customer_id": self.customers[r], "terminal_id": self.terminals[r],
                                    "tx_amount": float(self.amount[r])}, True


class ReplaySource(EventSource):
    """In-process replay of a transaction table; as fast as possible unless ``speedup`` or ``rate`` is set."""

    def __init__(self, df: pd.DataFrame | Timeline, speedup: float | None = None, rate: float | None = None):
        self.timeline = df if isinstance(df, Timeline) else Timeline(df)
        self.speedup, self.rate = speedup, rate
        self.next = 0
        self._t0_wall: float | None = None
        self._t0_event = 0
        self._i0 = 0

    def seek(self, position: dict[str, int]) -> None:
        self.next = int(position.get(REPLAY_PARTITION, 0))
        self._t0_wall = None

    @property
    def exhausted(self) -> bool:
        return self.next >= len(self.timeline)

    def _due(self, i: int) -> float:
        """Wall time at which event i is emitted."""
        assert self._t0_wall is not None
        if self.rate:
            return self._t0_wall + (i - self._i0) / self.rate
        return self._t0_wall + (int(self.timeline.time_us[i]) - self._t0_event) / 1e6 / self.speedup

    def poll(self, max_messages: int = 1000, timeout: float = 0.1) -> list[Message]:
        tl = self.timeline
        end = min(self.next + max_messages, len(tl))
        if self.next >= end:
            return []
        now = time.time()
        paced = bool(self.rate or self.speedup)
        if paced:
            if self._t0_wall is None:
                self._t0_wall, self._t0_event, self._i0 = now, int(tl.time_us[self.next]), self.next
            # Emit what is due; if nothing is due yet, wait for the next event (at most ``timeout``).
            first_due = self._due(self.next)
            if first_due > now:
                time.sleep(min(first_due - now, timeout))
                now = time.time()
            stop = self.next
            while stop < end and self._due(stop) <= now:
                stop += 1
            end = stop
        out = []
        for i in range(self.next, end):
            topic, value, trusted = tl.event(i)
            out.append(Message(topic, 0, i, value, self._due(i) if paced else now, trusted, REPLAY_PARTITION))
        self.next = end
        return out

    def position_key(self) -> str:
        return REPLAY_PARTITION


# ----------------------------------------------------------------------------------------------- kafka

class KafkaSource(EventSource):
    """Consumes the transactions and labels topics with ``assign()`` (no group join wait)."""

    def __init__(self, bootstrap: str, topics: tuple[str, ...] = (TOPIC_TRANSACTIONS, TOPIC_LABELS)):
        from confluent_kafka import Consumer

        from streaming.kafka_io import consumer_config, ensure_topics, partitions_of

        ensure_topics(bootstrap)
        self.bootstrap = bootstrap
        self.partitions = [(t, p) for t in topics for p in partitions_of(bootstrap, t)]
        self.consumer = Consumer(consumer_config(bootstrap))
        self._more_queued = False
        self.seek({})

    def seek(self, position: dict[str, int]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self.consumer.assign([TopicPartition(t, p, int(position.get(f"{t}:{p}", OFFSET_BEGINNING)))
                              for t, p in self.partitions])

    def poll(self, max_messages: int = 1000, timeout: float = 0.1) -> list[Message]:
        # consume(n, t) waits until n messages or t: at a modest rate that would hold every batch for the
        # whole timeout. Wait for the first message only, then take what is already fetched.
        batch = self.consumer.consume(num_messages=max_messages, timeout=0)
        if not batch:
            batch = self.consumer.consume(num_messages=1, timeout=timeout)
            if batch and max_messages > 1:
                batch += self.consumer.consume(num_messages=max_messages - 1, timeout=0)
        # A full batch means more may be queued locally: not caught up, whatever the watermarks say (tansu
        # reports a partition's high watermark as its last record batch's base offset + 1).
        self._more_queued = len(batch) >= max_messages
        out = []
        for m in batch:
            err = m.error()
            if err is not None:
                if err.code() == -191:  # _PARTITION_EOF (only if enabled): not an error
                    continue
                raise RuntimeError(f"kafka consume error: {err}")
            ts_type, ts_ms = m.timestamp()
            out.append(Message(m.topic(), m.partition(), m.offset(), m.value(),
                               ts_ms / 1000.0 if ts_type else time.time()))
        return out

    def labels_caught_up(self) -> bool:
        from confluent_kafka import TopicPartition

        if self._more_queued:
            return False
        tps = [TopicPartition(t, p) for t, p in self.partitions if t == TOPIC_LABELS]
        for tp in self.consumer.position(tps):
            high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high is None or high[1] < 0:
                high = self.consumer.get_watermark_offsets(tp, timeout=5)
            if tp.offset < 0 or tp.offset < high[1]:
                return tp.offset < 0 and high[1] == 0
        return True

    def commit(self, position: dict[str, int]) -> None:
        """Record offsets in the consumer group (monitoring only; the checkpoint is the truth)."""
        from confluent_kafka import TopicPartition

        tps = []
        for key, off in position.items():
            t, p = key.rsplit(":", 1)
            tps.append(TopicPartition(t, int(p), off))
        if tps:
            try:
                self.consumer.commit(offsets=tps, asynchronous=True)
            except Exception:  # lag monitoring must never stop the worker
                pass

    def close(self) -> None:
        self.consumer.close()
