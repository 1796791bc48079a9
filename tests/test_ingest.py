"""Ingest lands good rows and quarantines bad ones with a reason; nothing is dropped silently, nothing from
the file reaches SQL text, and every run accounts for every row (rows_in = landed + quarantined)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from ml.data.ingest import OUTSIDE, land

GOOD = [
    ("t1", "2018-04-01 10:00:00", "c1", "m1", "10.5", "0"),
    ("t2", "2018-04-01 11:00:00", "c1", "m2", "0", "1"),
    ("t3", "2018-04-02 09:00:00", "c2", "m1", "99.99", ""),
    ("t4", "2018-04-01 10:00:00+05:00", "c3", "m1", "5", "1.0"),  # 05:00 UTC, label 1
    ("t5", "2018-04-01T12:00:00Z", "c3", "m1", "1000000", "0.0"),
]
CTRL = "transaction_id has control or format characters"
BAD = [
    ("", "2018-04-01 10:00:00", "c1", "m1", "1", "0", "null transaction_id"),
    ("b2", "2018-04-01 10:00:00", "", "m1", "1", "0", "null customer_id"),
    ("b3", "2018-04-01 10:00:00", "c1", "m1", "-4", "0", "negative tx_amount"),
    ("b4", "2018-04-01 10:00:00", "c1", "m1", "ten", "0", "non-numeric tx_amount"),
    ("b5", "yesterday-ish", "c1", "m1", "1", "0", "unparseable tx_datetime"),
    ("t2", "2018-04-01 11:00:00", "c1", "m2", "0", "1", "duplicate transaction_id"),  # exact copy
    ("b7", "2018-04-01 10:00:00", "c1", "m1", "1", "2", "tx_fraud not 0/1"),
    ("b8", "2018-04-01 10:00:00", "c1", "m1", "1", "0.6", "tx_fraud not 0/1"),
    ("b9", "2018-04-01 10:00:00", "c1", "m1", "1", "-1", "tx_fraud not 0/1"),
    ("x" * 65, "2018-04-01 10:00:00", "c1", "m1", "1", "0", "transaction_id too long"),
    ("b\x07x", "2018-04-01 10:00:00", "c1", "m1", "1", "0", CTRL),
    ("b\u200bx", "2018-04-01 10:00:00", "c1", "m1", "1", "0", CTRL),
    ("b13", "2018-04-01 10:00:00", "c1", "\u3000 ", "1", "0", "blank terminal_id"),
    ("b14", "2018-04-01 10:00:00", "c1", "m1", "1000000.01", "0", "tx_amount above FRAUD_MAX_AMOUNT"),
    ("b15", "2018-04-01 10:00:00", "c1", "m1", "inf", "0", "non-numeric tx_amount"),
    ("b16", "1999-12-31 23:59:59", "c1", "m1", "1", "0", "tx_datetime before FRAUD_MIN_TX_TIME"),
    ("b17", "2999-01-01 00:00:00", "c1", "m1", "1", "0", "tx_datetime after now + FRAUD_MAX_TX_AHEAD_S"),
    # Same id, different content: no copy can be trusted.
    ("d1", "2018-04-01 10:00:00", "c1", "m1", "1", "0", "conflicting duplicate transaction_id"),
    ("d1", "2018-04-01 10:00:00", "c1", "m1", "2", "0", "conflicting duplicate transaction_id"),
]
COLS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]


def _csv(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame([r[:6] for r in rows], columns=COLS).to_csv(path, index=False)
    return path


@pytest.fixture()
def user_csv(tmp_path: Path) -> Path:
    return _csv(tmp_path / "user.csv", GOOD + BAD)


def test_bad_rows_are_quarantined_with_reasons(user_csv: Path, tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("set TimeZone = 'America/New_York'")  # the conversion must not depend on the session
        stats = land(con, user_csv, "2018-04-01", "2018-04-03", label_delay_days=7)
        landed = con.execute(
            "select transaction_id, tx_datetime, tx_amount, tx_fraud, label_time from raw.transactions "
            "order by 1"
        ).df().set_index("transaction_id")
        reasons = sorted(r[0] for r in con.execute("select reason from raw.quarantine").fetchall())
        (tz,) = con.execute("select current_setting('TimeZone')").fetchone()
    assert list(landed.index) == ["t1", "t2", "t3", "t4", "t5"]
    assert stats.rows == stats.landed == 5 and stats.frauds == 2
    assert reasons == sorted(r[6] for r in BAD)
    assert stats.quarantined_total == len(BAD) and stats.rows_in == len(GOOD) + len(BAD)
    assert tz == "America/New_York"  # the caller's setting is restored
    # An offset is converted to UTC, not dropped; "1.0" is a label of 1.
    assert landed.tx_datetime["t4"] == pd.Timestamp("2018-04-01 05:00:00")
    assert landed.tx_datetime["t5"] == pd.Timestamp("2018-04-01 12:00:00")
    assert landed.tx_fraud["t4"] == 1 and landed.tx_fraud["t5"] == 0
    # Missing label_time: known after the configured delay; unlabelled rows stay unlabelled.
    assert landed.label_time["t1"] == pd.Timestamp("2018-04-08 10:00:00")
    assert pd.isna(landed.tx_fraud["t3"]) and pd.isna(landed.label_time["t3"])


def test_every_run_accounts_for_every_row_and_reruns_are_idempotent(user_csv: Path, tmp_path: Path) -> None:
    n_in = len(GOOD) + len(BAD)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        day1 = land(con, user_csv, "2018-04-01", "2018-04-02")
        again = land(con, user_csv, "2018-04-01", "2018-04-02")
        table = lambda: con.execute(  # noqa: E731
            "select (select count(*) from raw.transactions), (select count(*) from raw.quarantine), "
            "(select count(*) from raw.quarantine where reason = ?)", [OUTSIDE]).fetchone()
        after_day1 = table()
        day2 = land(con, user_csv, "2018-04-02", "2018-04-03")
        after_day2 = table()
        backfill = land(con, user_csv, "2018-04-01", "2018-04-03")  # two days, one run
        after_backfill = table()
    for s in (day1, again, day2, backfill):
        assert s.rows_in == n_in == s.landed + s.quarantined_total
    # Day 1: t3 (day 2) is outside the run's partitions; recorded until its own run lands it.
    assert day1.landed == again.landed == 4 and day1.quarantined[OUTSIDE] == 1
    assert day1 == again and after_day1 == (4, len(BAD) + 1, 1)
    assert day2.landed == 1 and day2.quarantined[OUTSIDE] == 4
    assert after_day2 == (5, len(BAD), 0)  # landed rows of other days are not re-recorded as pending
    assert backfill.landed == 5 and OUTSIDE not in backfill.quarantined
    assert after_backfill == (5, len(BAD), 0)


def test_file_name_never_reaches_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quote in the name loads; an injection attempt in the name is a file name, nothing else."""
    monkeypatch.chdir(tmp_path)  # where the injected COPY would write its relative file
    marker = tmp_path / "pwned.csv"
    quoted = _csv(tmp_path / "o'brien.csv", GOOD[:2])
    _csv(tmp_path / "x.csv", GOOD[:2])  # so that, pasted into SQL, the statement before the COPY succeeds
    evil = _csv(tmp_path / "x.csv', all_varchar=true); copy (select 42) to 'pwned.csv'; --.csv", GOOD[:2])
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        assert land(con, quoted, "2018-04-01", "2018-04-02").landed == 2
        stats = land(con, evil, "2018-04-01", "2018-04-02")
        sources = {r[0] for r in con.execute("select distinct source from raw.transactions").fetchall()}
    assert stats.landed == 2 and not marker.exists()
    assert sources == {str(evil)}  # the slice was replaced from the file of that name


def test_parquet_source_with_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pd.DataFrame({
        "transaction_id": [1, 2], "customer_id": [7, 7], "terminal_id": [3, 4],
        "tx_datetime": pd.to_datetime(["2018-04-01 10:00", "2018-04-01 11:00"]).tz_localize("Europe/Paris"),
        "tx_amount": [1.5, 2.0], "tx_fraud": [0, 1],
    }).to_parquet(path)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        stats = land(con, path, "2018-04-01", "2018-04-02")
        times = [r[0] for r in con.execute("select tx_datetime from raw.transactions order by 1").fetchall()]
    assert stats.landed == 2 and stats.frauds == 1
    assert [str(t) for t in times] == ["2018-04-01 08:00:00", "2018-04-01 09:00:00"]


def test_missing_required_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame({"transaction_id": [1], "tx_amount": [1.0]}).to_csv(path, index=False)
    with (
        duckdb.connect(str(tmp_path / "w.duckdb")) as con,
        pytest.raises(ValueError, match="missing required"),
    ):
        land(con, path, "2018-04-01", "2018-04-02")


@pytest.mark.pipeline
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
    assert meta["rows_in"].value == len(GOOD) + len(BAD)
    assert meta["landed"].value == meta["rows"].value == 4
    assert meta["quarantined"].value == len(BAD) + 1  # t3 lies outside the run's day
    assert meta["quarantine_reasons"].value[OUTSIDE] == 1
