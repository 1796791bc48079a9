"""Point-in-time train/validation/test frames for a training day D, read from the warehouse.

D is the day a model is trained (its partition), at D 00:00. Only labels known then may be used, so the
labelled windows end at the *label horizon* D - delay, and every row must also satisfy label_time <= D
(which matters when delays vary per transaction):

    [ train (train_days) ][ valid (valid_days) ]| delay |[ test (test_days) ]
                                             D - delay   D                D + test_days

The split is by timestamp, fixed (no shuffling): validation is the most recent labelled window, used for
early stopping, model selection and the alert threshold. The test window starts at D (the days the model
would score in production) and can be evaluated once its labels are known, at D + test_days + delay.
This is the book's protocol: train up to 2018-07-31, 7-day delay, test 2018-08-08..14 is D = 2018-08-08.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np

from ml.features.spec import FEATURE_NAMES, FEATURES_TABLE


@dataclass(frozen=True)
class SplitLengths:
    """Window lengths in days; ``delay_days`` None means the configured label delay (settings)."""

    train_days: int = 21
    valid_days: int = 7
    test_days: int = 7
    delay_days: float | None = None

    def resolved_delay(self) -> float:
        if self.delay_days is not None:
            return float(self.delay_days)
        from ml.settings import get_settings

        return get_settings().label_delay_days


@dataclass(frozen=True)
class Windows:
    day: datetime  # D 00:00: training time, labels known up to here
    train: tuple[datetime, datetime]  # [start, end)
    valid: tuple[datetime, datetime]
    test: tuple[datetime, datetime]
    delay_days: float

    def as_dict(self) -> dict[str, str | float]:
        f = "%Y-%m-%d %H:%M:%S"
        return {
            "day": self.day.strftime("%Y-%m-%d"), "delay_days": self.delay_days,
            "train_start": self.train[0].strftime(f), "train_end": self.train[1].strftime(f),
            "valid_start": self.valid[0].strftime(f), "valid_end": self.valid[1].strftime(f),
            "test_start": self.test[0].strftime(f), "test_end": self.test[1].strftime(f),
        }


def as_datetime(day: str | date | datetime) -> datetime:
    if isinstance(day, datetime):
        return day
    if isinstance(day, date):
        return datetime(day.year, day.month, day.day)
    return datetime.fromisoformat(day)


def windows_for(day: str | date | datetime, cfg: SplitLengths = SplitLengths()) -> Windows:
    if min(cfg.train_days, cfg.valid_days, cfg.test_days) < 1:
        raise ValueError(f"window lengths must be >= 1 day: {cfg}")
    d = as_datetime(day)
    delay = cfg.resolved_delay()
    horizon = d - timedelta(days=delay)
    valid = (horizon - timedelta(days=cfg.valid_days), horizon)
    train = (valid[0] - timedelta(days=cfg.train_days), valid[0])
    test = (d, d + timedelta(days=cfg.test_days))
    return Windows(d, train, valid, test, delay)


@dataclass
class Frame:
    """Rows of one window: ids, times, labels and the feature matrix (columns = ``feature_names``)."""

    transaction_id: np.ndarray
    tx_datetime: np.ndarray
    customer_id: np.ndarray
    label_time: np.ndarray
    y: np.ndarray
    X: np.ndarray
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def day(self) -> np.ndarray:
        return self.tx_datetime.astype("datetime64[D]")


def _col(a: np.ndarray, dtype: str) -> np.ndarray:
    if isinstance(a, np.ma.MaskedArray):
        return a.astype(dtype).filled(np.nan) if dtype.startswith("float") else a.filled(0).astype(dtype)
    return a.astype(dtype, copy=False)


def load_frame(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
               feature_names: Sequence[str] = FEATURE_NAMES, labels_known_at: datetime | None = None,
               relation: str = FEATURES_TABLE) -> Frame:
    """Labelled rows with tx_datetime in [start, end) (and label_time <= labels_known_at if given)."""
    cols = {r[0] for r in con.execute(f"describe select * from {relation}").fetchall()}
    missing = [f for f in feature_names if f not in cols]
    if missing:
        raise ValueError(f"{relation} lacks feature column(s) {missing}: rebuild the features (dbt) for this "
                         "spec")
    feats = ", ".join(f'"{f}"' for f in feature_names)
    where = "tx_datetime >= ? and tx_datetime < ? and tx_fraud is not null"
    params: list[object] = [start, end]
    if labels_known_at is not None:
        where += " and label_time <= ?"
        params.append(labels_known_at)
    r = con.execute(
        f"select transaction_id, tx_datetime, customer_id, label_time, tx_fraud, {feats} from {relation} "
        f"where {where} order by tx_datetime, transaction_id", params,
    ).fetchnumpy()
    X = (np.column_stack([_col(r[f], "float32") for f in feature_names]) if len(r["tx_fraud"])
         else np.zeros((0, len(feature_names)), dtype=np.float32))
    return Frame(
        transaction_id=r["transaction_id"].astype(str), tx_datetime=r["tx_datetime"],
        customer_id=r["customer_id"].astype(str), label_time=r["label_time"],
        y=_col(r["tx_fraud"], "int8"), X=X, feature_names=tuple(feature_names),
    )


@dataclass
class TrainingData:
    windows: Windows
    train: Frame
    valid: Frame

    def fingerprint(self) -> str:
        return fingerprint(self.train, self.valid)


def fingerprint(*frames: Frame) -> str:
    """Hash of the rows a model learns from (ids, labels, features): same data <=> same fingerprint."""
    h = hashlib.sha256()
    for f in frames:
        h.update("\x1f".join(f.transaction_id.tolist()).encode())
        h.update(np.ascontiguousarray(f.y).tobytes())
        h.update(np.ascontiguousarray(f.X).tobytes())
        h.update(",".join(f.feature_names).encode())
    return h.hexdigest()[:16]


def build(con: duckdb.DuckDBPyConnection, day: str | date | datetime, cfg: SplitLengths = SplitLengths(),
          relation: str = FEATURES_TABLE) -> TrainingData:
    w = windows_for(day, cfg)
    train = load_frame(con, *w.train, labels_known_at=w.day, relation=relation)
    valid = load_frame(con, *w.valid, labels_known_at=w.day, relation=relation)
    for name, fr in (("training", train), ("validation", valid)):
        if len(fr) == 0 or fr.y.sum() == 0:
            raise ValueError(f"{name} window {w.as_dict()} has no labelled rows or no fraud: "
                             "pick a later day or longer windows (is the warehouse loaded?)")
    return TrainingData(w, train, valid)


def write_parquet(con: duckdb.DuckDBPyConnection, day: str | date | datetime, cfg: SplitLengths,
                  path: Path) -> None:
    """Materialize the train+valid rows of day D as one Parquet file with a ``split`` column."""
    w = windows_for(day, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    # The relation API takes the file name as a value: no path is ever part of the SQL text.
    con.sql(
        f"""select case when tx_datetime < ? then 'train' else 'valid' end as split, *
            from {FEATURES_TABLE}
            where tx_datetime >= ? and tx_datetime < ? and tx_fraud is not null and label_time <= ?
            order by tx_datetime, transaction_id""",
        params=[w.valid[0], w.train[0], w.valid[1], w.day],
    ).write_parquet(str(tmp))
    tmp.replace(path)


def read_parquet(path: Path, day: str | date | datetime, cfg: SplitLengths) -> TrainingData:
    """The TrainingData of a file written by ``write_parquet`` (same rows as ``build``)."""
    with duckdb.connect() as con:
        con.read_parquet(str(path)).create_view("training_rows")
        w = windows_for(day, cfg)
        return TrainingData(w, load_frame(con, *w.train, relation="training_rows"),
                            load_frame(con, *w.valid, relation="training_rows"))


# The book removes the cards of frauds seen since its training start: 7 training days + 7 delay days before
# the test start. Kept fixed so that longer training windows are compared on the same test rows.
KNOWN_COMPROMISED_LOOKBACK_DAYS = 14


def known_frauds(con: duckdb.DuckDBPyConnection, test_start: datetime, test_end: datetime,
                 lookback_days: float = KNOWN_COMPROMISED_LOOKBACK_DAYS,
                 relation: str = FEATURES_TABLE) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id, label_time) of frauds from test_start - lookback to test_end with a known label time."""
    r = con.execute(
        f"select customer_id, label_time from {relation} where tx_fraud = 1 and label_time is not null "
        "and tx_datetime >= ? and tx_datetime < ?",
        [test_start - timedelta(days=lookback_days), test_end],
    ).fetchnumpy()
    return r["customer_id"].astype(str), r["label_time"]
