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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ml.contract import MAX_ID_LEN, limits, to_utc_naive
from ml.events import TOPIC_LABELS, TOPIC_TRANSACTIONS
from ml.features.spec import FEATURES_TABLE

if TYPE_CHECKING:
    import pandas as pd

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

def as_polars(df: pl.DataFrame | pd.DataFrame) -> pl.DataFrame:
    """``df`` as a polars frame: a pandas frame (from a caller not yet on polars) is converted once, its index
    dropped."""
    return df if isinstance(df, pl.DataFrame) else pl.from_pandas(df)


def _bound(value: str | None, option: str) -> datetime | None:
    """An ISO date/time option as naive UTC (an offset is converted); a clear error when it is not one."""
    if not value:
        return None
    try:
        return to_utc_naive(datetime.fromisoformat(value))
    except ValueError:
        raise ValueError(f"{option} must be an ISO date or date-time (e.g. 2018-09-01)") from None


def _time_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    """Column ``name`` as naive UTC datetime[us]; null where it is no date-time (a number is none either: the
    contract calls it ambiguous). Text is parsed (an offset converted), the file's own text stays in the row."""
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return col.dt.cast_time_unit("us")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us"))
    if dtype == pl.String:
        return col.str.to_datetime(time_unit="us", time_zone="UTC", strict=False).dt.replace_time_zone(None)
    return pl.lit(None, dtype=pl.Datetime("us"))


def _number_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    """Column ``name`` as float64; null where it is no number."""
    if dtype.is_numeric() or dtype == pl.Boolean:
        return pl.col(name).cast(pl.Float64)
    if dtype == pl.String:
        return pl.col(name).cast(pl.Float64, strict=False)
    return pl.lit(None, dtype=pl.Float64)


def load_transactions(path: Path | None = None, warehouse: Path | None = None,
                      start: str | None = None, end: str | None = None) -> pl.DataFrame:
    """Transactions (with tx_fraud, label_time when known) from a file or the warehouse.

    A file is scanned lazily (the time range filtered in the scan); a CSV keeps its text as written, as a
    Kafka producer would send it. The warehouse is read through the features snapshot
    (``ml.data.warehouse``): the transactions of the last feature build, without holding the warehouse (a dbt
    build may run meanwhile)."""
    lo, hi = _bound(start, "--start"), _bound(end, "--end")
    if warehouse is not None:
        from ml.data.warehouse import features_connection, time_range

        where, params = time_range(lo, hi)
        sql = ("select transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud, "
               f"label_time from {FEATURES_TABLE}" + where)
        with features_connection(warehouse) as con:
            return con.sql(sql, params=params).pl()  # through Arrow
    if path is None:
        raise ValueError("replay needs a file path or a warehouse")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        # pandas stores a non-default index as a column of its own: not part of the table
        return _in_range(pl.scan_parquet(path).drop(pl.col(r"^__index_level_\d+__$")), lo, hi).collect()
    try:
        return _in_range(pl.scan_csv(path), lo, hi).collect()
    except pl.exceptions.ComputeError:
        # A value further down than the sampled rows that their types do not fit: types from the whole file.
        return _in_range(pl.scan_csv(path, infer_schema_length=None), lo, hi).collect()


def _in_range(lf: pl.LazyFrame, lo: datetime | None, hi: datetime | None) -> pl.LazyFrame:
    """The rows with ``lo <= tx_datetime < hi`` (a bound that is None does not cut)."""
    if lo is None and hi is None:
        return lf
    t = _time_expr("tx_datetime", lf.collect_schema()["tx_datetime"])
    if lo is not None:
        lf = lf.filter(t >= lo)
    if hi is not None:
        lf = lf.filter(t < hi)
    return lf


def _id_strings(col: pl.Series) -> pl.Series:
    """Ids as strings, as the JSON path writes them ("" where missing: those rows are dead-lettered).

    Whole floats (an integer column with a gap, as pandas holds it) are still written as integers.
    """
    if col.dtype.is_float():
        col = col.fill_nan(None)
        present = col.drop_nulls()
        if present.is_finite().all() and (present == present.floor()).all():
            col = col.cast(pl.Int64)
    if col.dtype.is_integer():
        col = col.cast(pl.String)
    elif col.dtype != pl.String:
        col = pl.Series(col.name, [None if v is None else str(v) for v in col.to_list()], dtype=pl.String)
    return col.fill_null("")


def _ids_valid(ids: pl.Series) -> np.ndarray:
    """Ids (``_id_strings``) that surely pass the contract's ``check_identifier``: 1..64 ASCII characters,
    no control characters, not all whitespace. A non-ASCII id is left to ``check_identifier`` itself."""
    ok = ((ids.str.len_chars() <= MAX_ID_LEN) & (ids.str.strip_chars() != "")
          & ~ids.str.contains(r"[^\x00-\x7f]") & ~ids.str.contains(r"[\x00-\x1f\x7f]"))
    return ok.fill_null(False).to_numpy()


def _in_time_range(t: np.ndarray) -> np.ndarray:
    """Times (datetime64[us]) within the contract's range (NaT is not)."""
    lim = limits()
    lo, hi = np.datetime64(lim.min_time, "us"), np.datetime64(lim.max_time(), "us")
    return ~np.isnat(t) & (t >= lo) & (t <= hi)


def _plain(v: object) -> object:
    """A cell as the JSON path would carry it (NaN is missing, as in a pandas frame)."""
    return None if isinstance(v, float) and v != v else v


def _datetimes(s: pl.Series) -> np.ndarray:
    return s.to_frame().select(_time_expr(s.name, s.dtype)).to_series().to_numpy().astype("datetime64[us]")


def _floats(s: pl.Series) -> np.ndarray:
    return s.to_frame().select(_number_expr(s.name, s.dtype)).to_series().to_numpy().astype("float64")


class Timeline:
    """The merged, time-ordered event list of a transaction table, held as columns (built once).

    Every event is validated exactly as a Kafka message is: a row whose normalised values surely pass the
    contract travels as a trusted dict (those checks run here on whole columns, so replay stays fast); any
    other row travels as it is, untrusted, and the worker parses it with the same functions as a Kafka
    message (``ml.events``), which accept it or dead-letter it with the reason.
    """

    def __init__(self, df: pl.DataFrame | pd.DataFrame):
        df = as_polars(df)
        n = df.height
        tx_time = _datetimes(df["tx_datetime"])
        amount = _floats(df["tx_amount"])
        ids = _id_strings(df["transaction_id"])
        customers, terminals = _id_strings(df["customer_id"]), _id_strings(df["terminal_id"])
        id_ok = _ids_valid(ids)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(amount) & (amount >= 0) & (amount <= limits().max_amount)
        ok &= _in_time_range(tx_time)
        ok &= id_ok & _ids_valid(customers) & _ids_valid(terminals)
        self.ids, self.customers, self.terminals = ids.to_numpy(), customers.to_numpy(), terminals.to_numpy()
        self.amount = amount
        self.tx_time = tx_time
        self.ok = ok
        self.raw = df
        has_label = np.zeros(n, dtype=bool)
        label_ok = np.zeros(n, dtype=bool)
        label_time = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        fraud = np.zeros(n, dtype=np.int8)
        if "tx_fraud" in df.columns and "label_time" in df.columns:
            label_time = _datetimes(df["label_time"])
            f = _floats(df["tx_fraud"])
            # A row has a label when it has a tx_fraud; a label outside the contract (not exactly 0/1, no or
            # a bad label_time, a bad id) travels untrusted so the worker dead-letters it with the reason.
            # A bad transaction's good label still travels: the worker dead-letters it ("never saw").
            col = df["tx_fraud"]
            has_label = col.is_not_null().to_numpy()
            if col.dtype.is_float():
                has_label &= ~col.is_nan().fill_null(False).to_numpy()
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
        keys = pl.DataFrame({"time": times, "rank": ranks, "id": ids.gather(rows)})
        # a stable sort: equal keys keep the table's order
        order = keys.select(pl.arg_sort_by("time", "rank", "id", maintain_order=True)).to_series().to_numpy()
        self.kind = (ranks[order] == 0) | (ranks[order] == 2)  # True = label
        self.row = rows[order]
        self.time_us = times[order]

    def __len__(self) -> int:
        return len(self.row)

    def event(self, i: int) -> tuple[str, dict, bool]:
        """(topic, value, trusted) of event i."""
        return self.events(i, i + 1)[0]

    def iter_events(self, start: int = 0, stop: int | None = None,
                    batch: int = 5000) -> Iterator[tuple[str, dict, bool]]:
        """(topic, value, trusted) of events ``start`` to ``stop``, built ``batch`` at a time."""
        stop = len(self) if stop is None else stop
        for i in range(start, stop, batch):
            yield from self.events(i, min(i + batch, stop))

    def events(self, start: int, stop: int) -> list[tuple[str, dict, bool]]:
        """(topic, value, trusted) of events ``start`` to ``stop`` (columns gathered once per batch)."""
        rows = self.row[start:stop]
        ids, customers, terminals = (a[rows].tolist() for a in (self.ids, self.customers, self.terminals))
        tx_time, amount = self.tx_time[rows].tolist(), self.amount[rows].tolist()
        label_time, fraud = self.label_time[rows].tolist(), self.fraud[rows].tolist()
        ok, label_ok = self.ok[rows].tolist(), self.label_ok[rows].tolist()
        out = []
        for j, (r, is_label) in enumerate(zip(rows.tolist(), self.kind[start:stop].tolist(), strict=True)):
            if is_label:
                if label_ok[j]:
                    out.append((TOPIC_LABELS, {"transaction_id": ids[j], "tx_fraud": fraud[j],
                                               "label_time": label_time[j]}, True))
                else:
                    raw = self.raw.row(r, named=True)
                    out.append((TOPIC_LABELS, {"transaction_id": ids[j] or _plain(raw["transaction_id"]),
                                               "tx_fraud": _plain(raw["tx_fraud"]),
                                               "label_time": _plain(raw["label_time"])}, False))
            elif ok[j]:
                out.append((TOPIC_TRANSACTIONS, {"transaction_id": ids[j], "tx_datetime": tx_time[j],
                                                 "customer_id": customers[j], "terminal_id": terminals[j],
                                                 "tx_amount": amount[j]}, True))
            else:
                raw = {k: _plain(v) for k, v in self.raw.row(r, named=True).items()}
                # Ids as the good rows carry them (an integer column with a gap reads as float), so the
                # reason names what is actually wrong.
                for col, value in (("transaction_id", ids[j]), ("customer_id", customers[j]),
                                   ("terminal_id", terminals[j])):
                    if value != "":
                        raw[col] = value
                out.append((TOPIC_TRANSACTIONS, raw, False))
        return out


class ReplaySource(EventSource):
    """In-process replay of a transaction table; as fast as possible unless ``speedup`` or ``rate`` is set."""

    def __init__(self, df: pl.DataFrame | pd.DataFrame | Timeline, speedup: float | None = None,
                 rate: float | None = None):
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
        out = [Message(topic, 0, i, value, self._due(i) if paced else now, trusted, REPLAY_PARTITION)
               for i, (topic, value, trusted) in enumerate(tl.events(self.next, end), start=self.next)]
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
