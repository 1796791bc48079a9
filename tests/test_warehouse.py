"""Readers never hold the warehouse: they scan the features snapshot, and where there is none they wait for
a writer and then fail with a clear message (never DuckDB's lock traceback); a reader cannot fail a build."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import duckdb
import pandas as pd
import pytest

from ml.data.ingest import land
from ml.data.warehouse import WarehouseBusy, export_features, features_connection, snapshot_dir
from streaming.sources import load_transactions

# Holds the warehouse as a writer does (a dbt build, an ingest run) until its stdin closes.
_HOLD = ("import duckdb, sys\ncon = duckdb.connect(sys.argv[1])\ncon.execute('begin')\n"
         "print('ready', flush=True)\nsys.stdin.read()\n")


@contextmanager
def writer_holding(db: Path) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.fixture()
def small_warehouse(tmp_path: Path) -> Path:
    """raw.transactions from a small file and a stand-in feature mart with the readers' columns."""
    csv = tmp_path / "tx.csv"
    pd.DataFrame({
        "transaction_id": ["a", "b", "c"], "customer_id": ["c1", "c1", "c2"], "terminal_id": ["m1"] * 3,
        "tx_datetime": ["2018-04-01 10:00:00", "2018-04-02 11:00:00", "2018-04-03 12:00:00"],
        "tx_amount": [1.0, 2.0, 3.0], "tx_fraud": [0, 1, 0],
    }).to_csv(csv, index=False)
    db = tmp_path / "data" / "warehouse.duckdb"
    db.parent.mkdir()
    with duckdb.connect(str(db)) as con:
        land(con, csv, "2018-04-01", "2018-04-04")
        con.execute("create table main.fct_transaction_features as select transaction_id, tx_datetime, "
                    "customer_id, terminal_id, tx_fraud, label_time, tx_amount from raw.transactions")
    return db


def test_without_snapshot_a_locked_warehouse_is_a_clear_error(small_warehouse: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from streaming.cli import _frame

    monkeypatch.setenv("FRAUD_WAREHOUSE_WAIT_S", "0.3")
    monkeypatch.setenv("FRAUD_WAREHOUSE", str(small_warehouse))
    with writer_holding(small_warehouse):
        with pytest.raises(WarehouseBusy, match="locked by a writer") as err:
            load_transactions(warehouse=small_warehouse)
        assert not isinstance(err.value, duckdb.Error) and err.value.__cause__ is None
        # `fraud worker --from-warehouse`: the same message as a CLI error, no traceback.
        with pytest.raises(click.ClickException, match="locked by a writer"):
            _frame(None, True, None, None)
    # Once the writer is done, the same read works (read-only, released at once).
    assert load_transactions(warehouse=small_warehouse)["transaction_id"].sort().to_list() == ["a", "b", "c"]


def test_with_a_snapshot_readers_do_not_touch_the_warehouse(small_warehouse: Path) -> None:
    with duckdb.connect(str(small_warehouse)) as con:
        export_features(con, small_warehouse)
    with writer_holding(small_warehouse):
        df = load_transactions(warehouse=small_warehouse, start="2018-04-02", end="2018-04-03T00:00:00+00:00")
        with features_connection(small_warehouse, wait_s=0) as con:
            days = con.execute("select distinct day from fct_transaction_features order by 1").fetchall()
    assert df["transaction_id"].to_list() == ["b"] and df["tx_fraud"][0] == 1
    assert [str(d[0]) for d in days] == ["2018-04-01", "2018-04-02", "2018-04-03"]
    assert sorted(p.name for p in snapshot_dir(small_warehouse).iterdir()) == [
        "day=2018-04-01", "day=2018-04-02", "day=2018-04-03"]


def test_replay_bounds_are_values_not_sql(small_warehouse: Path) -> None:
    with pytest.raises(ValueError, match="--start must be an ISO date"):
        load_transactions(warehouse=small_warehouse, start="2018-04-01' or 1=1 --")


def test_export_swaps_generations_and_keeps_the_previous_one(small_warehouse: Path) -> None:
    with duckdb.connect(str(small_warehouse)) as con:
        first = export_features(con, small_warehouse)
        con.execute("delete from main.fct_transaction_features where transaction_id = 'c'")
        second = export_features(con, small_warehouse)
        third = export_features(con, small_warehouse)
    assert snapshot_dir(small_warehouse).resolve() == third.resolve()
    # The previous generation stays for readers still scanning it; older ones go.
    assert not first.exists() and second.exists()
    with features_connection(small_warehouse) as con:
        assert con.execute("select count(*) from fct_transaction_features").fetchone()[0] == 2


def test_a_reader_on_the_snapshot_does_not_fail_the_dbt_build(warehouse: Path) -> None:
    """The session warehouse's features build exported a snapshot; a reader holding it open (mid-scan)
    while the dbt build runs again neither fails the build nor breaks."""
    from orchestration.demo import materialize

    with duckdb.connect(str(warehouse), read_only=True) as con:
        expected = con.execute("select count(*), sum(customer_nb_tx_7d) from main.fct_transaction_features"
                               ).fetchone()
    with features_connection(warehouse, wait_s=0) as con:
        # fetchall: a result must be finished before the reader below (DuckDB 2)
        assert con.execute("select count(*), sum(customer_nb_tx_7d) from fct_transaction_features"
                           ).fetchall() == [expected]
        batches = con.sql("select * from fct_transaction_features").to_arrow_reader(1000)
        first = batches.read_next_batch()
        assert materialize("group:features").success  # dbt build + a new snapshot generation
        rest = sum(b.num_rows for b in batches)
    assert first.num_rows + rest == expected[0]
