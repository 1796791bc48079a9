"""Batch scoring for ``fraud score``: every transaction of a warehouse date range, scored by the champion on
the offline (dbt) features. (The service's online scorer, transaction by transaction on the online
features, is ``bento.scorer``.)

Reads the feature mart's Parquet snapshot lazily with polars, a day partition at a time (``ml.data.warehouse``;
the warehouse read-only, streamed in Arrow batches, only when there is no snapshot yet), so scoring neither
blocks nor is blocked by a dbt build, and the range can exceed memory. The rows are whichever source the
pipeline ingested (simulator or a user's file).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ml.data.warehouse import features_source, has_snapshot
from ml.settings import get_settings
from ml.training.training_set import FEATURES_TABLE, FeatureSource, columns_of, feature_matrix

OUT_SCHEMA = pa.schema([("transaction_id", pa.string()), ("score", pa.float64()), ("model", pa.string())])


@dataclass(frozen=True)
class ScoreStats:
    rows: int
    model: str
    seconds: float
    out: Path


def score_range(start: date, end: date, out: Path, model_tag: str | None = None,
                warehouse: Path | None = None, batch_rows: int = 200_000) -> ScoreStats:
    """Score transactions with tx_datetime in [start, end] (whole days, end included) into Parquet ``out``,
    with the champion or the model ``model_tag``."""
    from ml.champion import load_champion

    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    champion = load_champion(model_tag)
    names = list(champion.feature_names)
    warehouse = Path(warehouse or get_settings().warehouse)
    if not warehouse.exists() and not has_snapshot(warehouse):
        raise FileNotFoundError(f"warehouse {warehouse} not found: run ingest and features first")
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, tag = 0, champion.tag
    with features_source(warehouse) as source, pq.ParquetWriter(out, OUT_SCHEMA) as writer:
        missing = [n for n in names if n not in columns_of(source, FEATURES_TABLE)]
        if missing:
            raise ValueError(f"model {champion.tag} needs feature(s) {missing} absent from the warehouse")
        for batch in _batches(source, ["transaction_id", *names], start, end, batch_rows):
            scores = champion.predict(feature_matrix(batch, names))
            writer.write_table(pa.table({
                "transaction_id": batch["transaction_id"].cast(pl.String).to_arrow().cast(pa.string()),
                "score": scores, "model": pa.array([tag] * len(scores), pa.string()),
            }, schema=OUT_SCHEMA))
            rows += len(scores)
    return ScoreStats(rows, champion.tag, time.perf_counter() - t0, out)


def _batches(source: FeatureSource, columns: list[str], start: date, end: date, batch_rows: int
             ) -> Iterator[pl.DataFrame]:
    """The rows of days [start, end] in (tx_datetime, transaction_id) order, in batches of ``batch_rows``.

    From the snapshot one day at a time (its partition, so memory holds a day however long the range);
    from the warehouse as a stream of Arrow batches."""
    cols = ", ".join(f'"{c}"' for c in columns)  # names from the model's metadata, checked against the mart
    if isinstance(source, pl.LazyFrame):
        day = start
        while day <= end:
            d0 = datetime(day.year, day.month, day.day)
            rows = (source.filter(pl.col("day") == day, pl.col("tx_datetime") >= d0,
                                  pl.col("tx_datetime") < d0 + timedelta(days=1))
                    .sort("tx_datetime", "transaction_id").select(columns).collect())
            yield from rows.iter_slices(batch_rows)
            day += timedelta(days=1)
        return
    reader = source.sql(
        f"select {cols} from {FEATURES_TABLE} "
        "where tx_datetime >= ? and tx_datetime < ? order by tx_datetime, transaction_id",
        params=[start, end + timedelta(days=1)],
    ).to_arrow_reader(batch_rows)
    for batch in reader:
        yield pl.from_arrow(batch)
