"""Reading the warehouse without holding it: the feature mart's Parquet snapshot, else a patient read-only.

DuckDB lets one process write a database file, and a reader in another process holds a lock too: a reader
open during a dbt build fails the build, and a reader that starts during one dies on the lock. So the
features asset exports ``main.fct_transaction_features`` after every successful build to a snapshot next
to the warehouse (``<data_dir>/features/day=YYYY-MM-DD/*.parquet``), and batch readers (``fraud score``,
``fraud worker --from-warehouse``, training sets, the parity replay) scan that snapshot from an in-memory
DuckDB connection. Only where no snapshot exists yet do they open the warehouse read-only, retrying while a
writer holds it (``FRAUD_WAREHOUSE_WAIT_S``, default 10 s) and then failing with ``WarehouseBusy``.

The snapshot is replaced atomically: each export writes a new generation directory and then swaps the
``features`` symlink to it (``os.replace``), so a reader sees a whole generation or the previous one.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from ml.features.spec import FEATURES_MART, FEATURES_TABLE
from ml.settings import get_settings

FEATURES_VIEW = FEATURES_MART  # same name as the mart, so the readers' SQL serves both
_GENERATIONS = ".features-generations"
_KEEP = 2  # the current generation and the one before it (a reader may still be scanning it)


class WarehouseBusy(RuntimeError):
    """The warehouse stayed locked by a writer (dbt build, ingest) for the whole wait."""


def snapshot_dir(warehouse: Path | str) -> Path:
    """Where the feature snapshot of ``warehouse`` lives: ``features`` beside it (data/features)."""
    return Path(warehouse).parent / "features"


def has_snapshot(warehouse: Path | str) -> bool:
    root = snapshot_dir(warehouse)
    return root.exists() and any(root.glob("day=*"))


def export_features(con: duckdb.DuckDBPyConnection, warehouse: Path | str,
                    table: str = FEATURES_TABLE) -> Path:
    """Write ``table`` as per-day Parquet (hive ``day=``) and make it the snapshot; returns its directory.

    ``table`` is a code constant (an identifier), never user input."""
    link = snapshot_dir(warehouse)
    gens = link.parent / _GENERATIONS
    gens.mkdir(parents=True, exist_ok=True)
    gen = gens / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    staging = gens / f".tmp-{gen.name}"
    con.execute("set enable_progress_bar = false")
    rel = con.table(table).project("*, cast(tx_datetime as date) as day")
    rel.write_parquet(str(staging), partition_by=["day"])
    staging.rename(gen)  # complete before it can be pointed at
    if link.exists() and not link.is_symlink():  # a directory from elsewhere: keep it, out of the way
        link.rename(link.with_name(f"features.old-{gen.name}"))
    tmp_link = link.with_name(f".features-link-{gen.name}")
    tmp_link.symlink_to(gen.relative_to(link.parent), target_is_directory=True)
    os.replace(tmp_link, link)
    for old in sorted(p for p in gens.iterdir() if not p.name.startswith("."))[:-_KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in gens.glob(".tmp-*"):  # an export that died half-way
        if stale != staging:
            shutil.rmtree(stale, ignore_errors=True)
    return gen


def snapshot_connection(warehouse: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory connection whose ``fct_transaction_features`` view scans the snapshot (one generation)."""
    root = snapshot_dir(warehouse).resolve()  # pin the generation: a later swap does not change this scan
    con = duckdb.connect()
    try:
        rel = con.read_parquet(str(root / "day=*" / "*.parquet"), hive_partitioning=True)
        rel.create_view(FEATURES_VIEW)
    except BaseException:
        con.close()
        raise
    return con


def _locked(e: duckdb.Error) -> bool:
    text = str(e).lower()
    return "lock" in text or "being used by another process" in text


def connect_read_only(warehouse: Path | str, wait_s: float | None = None) -> duckdb.DuckDBPyConnection:
    """The warehouse read-only, retrying while a writer holds it; ``WarehouseBusy`` after ``wait_s``."""
    path = Path(warehouse)
    if not path.exists():
        raise FileNotFoundError(f"warehouse {path} not found: run ingest and features first")
    if wait_s is None:
        wait_s = get_settings().warehouse_wait_s
    deadline = time.monotonic() + wait_s
    pause = 0.1
    while True:
        try:
            return duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as e:
            if not _locked(e):
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"warehouse {path} is locked by a writer (a dbt build or an ingest run) and stayed "
                    f"locked for {wait_s:g}s; retry when it has finished, or materialize the features "
                    "(Dagster group 'features') once so that readers use its Parquet snapshot"
                ) from None
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)


@contextmanager
def features_connection(warehouse: Path | str, wait_s: float | None = None
                        ) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection on which ``main.fct_transaction_features`` is readable: the snapshot when there is
    one (the warehouse is not touched), else the warehouse read-only (see ``connect_read_only``)."""
    con = snapshot_connection(warehouse) if has_snapshot(warehouse) else connect_read_only(warehouse, wait_s)
    try:
        yield con
    finally:
        con.close()


def time_range(since: datetime | None, until: datetime | None) -> tuple[str, list[datetime]]:
    """`` where tx_datetime >= ? and tx_datetime < ?`` for the bounds given (none: ``""``), and its values."""
    where, params = [], []
    if since is not None:
        where.append("tx_datetime >= ?")
        params.append(since)
    if until is not None:
        where.append("tx_datetime < ?")
        params.append(until)
    return (" where " + " and ".join(where) if where else ""), params


def scan_snapshot(warehouse: Path | str) -> pl.LazyFrame:
    """A lazy polars scan of the snapshot (one generation); its hive ``day`` column prunes whole files."""
    root = snapshot_dir(warehouse).resolve()  # pin the generation, as snapshot_connection does
    return pl.scan_parquet(root / "day=*" / "*.parquet", hive_partitioning=True, hive_schema={"day": pl.Date})


@contextmanager
def features_source(warehouse: Path | str, wait_s: float | None = None
                    ) -> Iterator[pl.LazyFrame | duckdb.DuckDBPyConnection]:
    """The feature mart for batch readers: a lazy scan of the snapshot when there is one, else the warehouse
    read-only (see ``connect_read_only``), read through Arrow."""
    if has_snapshot(warehouse):
        yield scan_snapshot(warehouse)
        return
    con = connect_read_only(warehouse, wait_s)
    try:
        yield con
    finally:
        con.close()


# Feature rows are read through DuckDB relations built from expressions: column names and values reach DuckDB
# as objects, never as SQL text.
TIME_ORDER = ("tx_datetime", "transaction_id")


def in_window(start: datetime, end: datetime) -> duckdb.Expression:
    """``tx_datetime`` in [start, end)."""
    t = duckdb.ColumnExpression("tx_datetime")
    return (t >= duckdb.ConstantExpression(start)) & (t < duckdb.ConstantExpression(end))


def column_exprs(names: Iterable[str]) -> list[duckdb.Expression]:
    """The columns, by name (any characters), as expressions."""
    return [duckdb.ColumnExpression(n) for n in names]

