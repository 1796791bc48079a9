"""Batch scoring for ``fraud score``: every transaction of a warehouse date range, scored by the champion on
the offline (dbt) features. (The service's online scorer, transaction by transaction on the online
features, is ``bento.scorer``.)

Reads the feature mart's Parquet snapshot (``ml.data.warehouse``; the warehouse read-only only when there is no
snapshot yet), so scoring neither blocks nor is blocked by a dbt build. The rows are whichever source the
pipeline ingested (simulator or a user's file), streamed in Arrow batches: the range can exceed memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ml.data.warehouse import features_connection, has_snapshot
from ml.settings import get_settings
from ml.training.training_set import FEATURES_TABLE

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
    with features_connection(warehouse) as con:
        cols = {r[0] for r in con.execute(f"describe {FEATURES_TABLE}").fetchall()}
        missing = [n for n in names if n not in cols]
        if missing:
            raise ValueError(f"model {champion.tag} needs feature(s) {missing} absent from the warehouse")
        feats = ", ".join(f'"{n}"' for n in names)
        reader = con.sql(
            f"select transaction_id, {feats} from {FEATURES_TABLE} "
            "where tx_datetime >= ? and tx_datetime < ? order by tx_datetime, transaction_id",
            params=[start, end + timedelta(days=1)],
        ).to_arrow_reader(batch_rows)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        rows, tag = 0, champion.tag
        with pq.ParquetWriter(out, OUT_SCHEMA) as writer:
            for batch in reader:
                X = np.column_stack([batch.column(n).to_numpy(zero_copy_only=False).astype(np.float32)
                                     for n in names])
                scores = champion.predict(X)
                writer.write_table(pa.table({
                    "transaction_id": batch.column("transaction_id").cast(pa.string()),
                    "score": scores, "model": pa.array([tag] * len(scores), pa.string()),
                }, schema=OUT_SCHEMA))
                rows += len(scores)
    return ScoreStats(rows, champion.tag, time.perf_counter() - t0, out)
