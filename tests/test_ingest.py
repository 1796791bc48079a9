"""Ingest lands good rows and quarantines bad ones with a reason; nothing is dropped silently."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from ml.ingest import land

GOOD = [
    ("t1", "2018-04-01 10:00:00", "c1", "m1", "10.5", "0"),
    ("t2", "2018-04-01 11:00:00", "c1", "m2", "0", "1"),
    ("t3", "2018-04-02 09:00:00", "c2", "m1", "99.99", ""),
]
BAD = [
    ("", "2018-04-01 10:00:00", "c1", "m1", "1", "0", "null transaction_id"),
    ("b2", "2018-04-01 10:00:00", "", "m1", "1", "0", "null customer_id"),
    ("b3", "2018-04-01 10:00:00", "c1", "m1", "-4", "0", "negative tx_amount"),
    ("b4", "2018-04-01 10:00:00", "c1", "m1", "ten", "0", "non-numeric tx_amount"),
    ("b5", "yesterday-ish", "c1", "m1", "1", "0", "unparseable tx_datetime"),
    ("t1", "2018-04-01 12:00:00", "c9", "m9", "5", "0", "duplicate transaction_id"),
    ("b7", "2018-04-01 10:00:00", "c1", "m1", "1", "2", "tx_fraud not 0/1"),
]
COLS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]


@pytest.fixture()
def user_csv(tmp_path: Path) -> Path:
    rows = GOOD + [r[:6] for r in BAD]
    path = tmp_path / "user.csv"
    pd.DataFrame(rows, columns=COLS).to_csv(path, index=False)
    return path


def test_bad_rows_are_quarantined_with_reasons(user_csv: Path, tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        stats = land(con, user_csv, "2018-04-01", "2018-04-03", label_delay_days=7)
        landed = con.execute(
            "select transaction_id, tx_amount, tx_fraud, label_time from raw.transactions order by 1"
        ).df()
        reasons = sorted(r[0] for r in con.execute("select reason from raw.quarantine").fetchall())
    assert list(landed.transaction_id) == ["t1", "t2", "t3"]
    assert stats.rows == 3 and stats.frauds == 1
    assert reasons == sorted(r[6] for r in BAD)
    assert stats.quarantined_total == len(BAD)
    # Missing label_time: known after the configured delay; unlabelled rows stay unlabelled.
    assert landed.label_time[0] == pd.Timestamp("2018-04-08 10:00:00")
    assert pd.isna(landed.tx_fraud[2]) and pd.isna(landed.label_time[2])


def test_reingesting_a_partition_is_idempotent(user_csv: Path, tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        land(con, user_csv, "2018-04-01", "2018-04-02")
        again = land(con, user_csv, "2018-04-01", "2018-04-02")
        n_tx, n_q = con.execute(
            "select (select count(*) from raw.transactions), (select count(*) from raw.quarantine)"
        ).fetchone()
    assert again.rows == 2 and n_tx == 2
    assert n_q == len(BAD)


def test_missing_required_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame({"transaction_id": [1], "tx_amount": [1.0]}).to_csv(path, index=False)
    with (
        duckdb.connect(str(tmp_path / "w.duckdb")) as con,
        pytest.raises(ValueError, match="missing required"),
    ):
        land(con, path, "2018-04-01", "2018-04-02")


def test_dagster_asset_reads_a_user_file_from_config(user_csv: Path, tmp_path: Path) -> None:
    from orchestration.assets.ingest import raw_transactions

    db = tmp_path / "dagster.duckdb"
    result = dg.materialize(
        [raw_transactions],
        partition_key="2018-04-01",
        resources={"duckdb": DuckDBResource(database=str(db))},
        run_config={"ops": {"raw_transactions": {"config": {"path": str(user_csv)}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("raw_transactions")[0].metadata
    assert meta["rows"].value == 2
    assert meta["quarantined"].value == len(BAD)
