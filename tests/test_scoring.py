"""`fraud score`: every transaction of the range scored by the champion, from the simulator's warehouse and
from a user's CSV file run through the whole pipeline (ingest -> dbt -> training -> gate -> score)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
from click.testing import CliRunner

from tests._training_helpers import train_pair

ROOT = Path(__file__).resolve().parent.parent


def _count(warehouse: Path, start: str, end_exclusive: str) -> set[str]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("select transaction_id from main.fct_transaction_features "
                           "where tx_datetime >= ? and tx_datetime < ?", [start, end_exclusive]).fetchall()
    return {r[0] for r in rows}


def test_score_cli_writes_every_transaction(warehouse: Path, tmp_path: Path) -> None:
    from ml import registry
    from ml.cli import main

    registry.promote(train_pair(warehouse)["good"]["tag"], "scoring test")
    out = tmp_path / "scores.parquet"
    res = CliRunner().invoke(main, ["score", "--from", "2018-05-20", "--to", "2018-05-22", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert list(df.columns) == ["transaction_id", "score", "model"]
    assert set(df.transaction_id) == _count(warehouse, "2018-05-20", "2018-05-23")
    assert len(df) == df.transaction_id.nunique()
    assert df.score.between(0, 1).all() and (df.model == str(registry.champion().tag)).all()
    bad = CliRunner().invoke(main, ["score", "--from", "2018-05-22", "--to", "2018-05-20", "--out", str(out)])
    assert bad.exit_code != 0 and "before" in bad.output


def test_score_on_a_user_file_through_the_whole_pipeline(warehouse: Path, tmp_path: Path) -> None:
    """FRAUD_SOURCE=file: a user's CSV (string ids, no label_time) -> trained champion -> fraud score."""
    from ml.data.sources import resolve_source
    from ml.settings import get_settings

    sim = pd.read_parquet(resolve_source(get_settings(), progress=False))
    cols = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]
    user = sim[cols].copy()
    user["transaction_id"] = "u-" + user.transaction_id.astype(str)
    csv = tmp_path / "my_transactions.csv"
    user.to_csv(csv, index=False)
    env = {**os.environ, "FRAUD_DATA_DIR": str(tmp_path / "data"), "FRAUD_SOURCE": "file",
           "FRAUD_SOURCE_PATH": str(csv), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    env.pop("BENTOML_HOME", None)
    env.pop("FRAUD_WAREHOUSE", None)
    (tmp_path / "dagster_home").mkdir()
    script = (
        "from orchestration.demo import demo_partition, materialize\n"
        "from orchestration.partitions import daily_partitions\n"
        "keys = daily_partitions.get_partition_keys()\n"
        "assert materialize('raw_transactions', partition_range=(keys[0], keys[-1])).success\n"
        "assert materialize('group:features').success\n"
        "assert materialize('group:training', partition_key=demo_partition()).success\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "scores.parquet"
    fraud = str(Path(sys.executable).parent / "fraud")
    proc = subprocess.run([fraud, "score", "--from", "2018-05-17", "--to", "2018-05-19", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(out)
    expected = user[(user.tx_datetime >= "2018-05-17") & (user.tx_datetime < "2018-05-20")]
    assert list(df.columns) == ["transaction_id", "score", "model"]
    assert set(df.transaction_id) == set(expected.transaction_id) and len(df) == len(expected)
    assert df.model.str.startswith("fraud-champion:").all() and df.score.notna().all()


def test_scores_from_the_snapshot_and_from_the_warehouse_are_the_same(warehouse: Path, tmp_path: Path) -> None:
    """``fraud score`` reads the snapshot day by day with polars, or the warehouse (no snapshot) in Arrow
    batches: the same rows, order and scores."""
    from ml.batch_scoring import score_range
    from ml.data.warehouse import has_snapshot

    tag = train_pair(warehouse)["good"]["tag"]
    bare = tmp_path / "no_snapshot" / "warehouse.duckdb"
    bare.parent.mkdir()
    bare.symlink_to(warehouse)
    assert has_snapshot(warehouse) and not has_snapshot(bare)
    a = score_range(date(2018, 5, 20), date(2018, 5, 22), tmp_path / "a.parquet", tag, batch_rows=1000)
    b = score_range(date(2018, 5, 20), date(2018, 5, 22), tmp_path / "b.parquet", tag, warehouse=bare,
                    batch_rows=1000)
    assert a.rows == b.rows == len(_count(warehouse, "2018-05-20", "2018-05-23")) > 1000
    assert pq.read_table(a.out).equals(pq.read_table(b.out))
