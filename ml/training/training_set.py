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
import polars as pl

from ml.data.warehouse import TIME_ORDER, column_exprs, in_window
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


# Where feature rows come from: a lazy polars scan (the mart's Parquet snapshot, a training-set file) or a
# DuckDB connection on which ``relation`` is readable (the warehouse), read through Arrow.
FeatureSource = pl.LazyFrame | duckdb.DuckDBPyConnection



def columns_of(source: FeatureSource, relation: str) -> list[str]:
    if isinstance(source, pl.LazyFrame):
        return source.collect_schema().names()
    return source.table(relation).columns


def _window_filter(start: datetime, end: datetime, columns: Sequence[str]) -> list[pl.Expr]:
    """tx_datetime in [start, end); on a hive-partitioned scan also its ``day``, which skips whole files."""
    out = [pl.col("tx_datetime") >= start, pl.col("tx_datetime") < end]
    if "day" in columns:
        out.append(pl.col("day").is_between(start.date(), (end - timedelta(microseconds=1)).date()))
    return out


def select_rows(source: FeatureSource, columns: Sequence[str], start: datetime, end: datetime,
                labels_known_at: datetime | None = None, relation: str = FEATURES_TABLE) -> pl.DataFrame:
    """``columns`` of the labelled rows with tx_datetime in [start, end) (and label_time <= labels_known_at
    if given), ordered by (tx_datetime, transaction_id)."""
    if isinstance(source, pl.LazyFrame):
        preds = [*_window_filter(start, end, columns_of(source, relation)), pl.col("tx_fraud").is_not_null()]
        if labels_known_at is not None:
            preds.append(pl.col("label_time") <= labels_known_at)
        return source.filter(*preds).sort(list(TIME_ORDER)).select(columns).collect()
    rows = source.table(relation).filter(in_window(start, end) & duckdb.ColumnExpression("tx_fraud").isnotnull())
    if labels_known_at is not None:
        rows = rows.filter(duckdb.ColumnExpression("label_time") <= duckdb.ConstantExpression(labels_known_at))
    return rows.sort(*column_exprs(TIME_ORDER)).select(*column_exprs(columns)).pl()


def feature_matrix(df: pl.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """The float32 matrix of ``feature_names`` (nulls as NaN, row-major), what XGBoost reads."""
    return df.select(pl.col(list(feature_names)).cast(pl.Float32)).to_numpy(order="c")


def load_frame(source: FeatureSource, start: datetime, end: datetime,
               feature_names: Sequence[str] = FEATURE_NAMES, labels_known_at: datetime | None = None,
               relation: str = FEATURES_TABLE) -> Frame:
    """Labelled rows with tx_datetime in [start, end) (and label_time <= labels_known_at if given)."""
    cols = set(columns_of(source, relation))
    missing = [f for f in feature_names if f not in cols]
    if missing:
        raise ValueError(f"{relation} lacks feature column(s) {missing}: rebuild the features (dbt) for this "
                         "spec")
    ids = ["transaction_id", "tx_datetime", "customer_id", "label_time", "tx_fraud"]
    df = select_rows(source, [*ids, *(f for f in feature_names if f not in ids)], start, end,
                     labels_known_at, relation)
    return Frame(
        transaction_id=df["transaction_id"].cast(pl.String).to_numpy().astype(str),
        tx_datetime=df["tx_datetime"].to_numpy(),
        customer_id=df["customer_id"].cast(pl.String).to_numpy().astype(str),
        label_time=df["label_time"].to_numpy(),
        y=df["tx_fraud"].cast(pl.Int8).to_numpy(), X=feature_matrix(df, feature_names),
        feature_names=tuple(feature_names),
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


def build(source: FeatureSource, day: str | date | datetime, cfg: SplitLengths = SplitLengths(),
          relation: str = FEATURES_TABLE) -> TrainingData:
    w = windows_for(day, cfg)
    train = load_frame(source, *w.train, labels_known_at=w.day, relation=relation)
    valid = load_frame(source, *w.valid, labels_known_at=w.day, relation=relation)
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
    rows = pl.scan_parquet(path)
    w = windows_for(day, cfg)
    return TrainingData(w, load_frame(rows, *w.train), load_frame(rows, *w.valid))


# The book removes the cards of frauds seen since its training start: 7 training days + 7 delay days before
# the test start. Kept fixed so that longer training windows are compared on the same test rows.
KNOWN_COMPROMISED_LOOKBACK_DAYS = 14


def known_frauds(source: FeatureSource, test_start: datetime, test_end: datetime,
                 lookback_days: float = KNOWN_COMPROMISED_LOOKBACK_DAYS,
                 relation: str = FEATURES_TABLE) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id, label_time) of frauds from test_start - lookback to test_end with a known label time."""
    since = test_start - timedelta(days=lookback_days)
    if isinstance(source, pl.LazyFrame):
        preds = [*_window_filter(since, test_end, columns_of(source, relation)), pl.col("tx_fraud") == 1,
                 pl.col("label_time").is_not_null()]
        df = source.filter(*preds).select("customer_id", "label_time").collect()
    else:
        df = pl.from_arrow(source.sql(
            f"select customer_id, label_time from {relation} where tx_fraud = 1 and label_time is not null "
            "and tx_datetime >= ? and tx_datetime < ?", params=[since, test_end],
        ).to_arrow_table())
    return df["customer_id"].cast(pl.String).to_numpy().astype(str), df["label_time"].to_numpy()
