"""The dbt feature models are the spec's rendering, and they are point-in-time correct."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from ml.features.spec import FEATURE_NAMES, FEATURES
from ml.features.sql import render

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dbt_models_match_the_spec() -> None:
    stale = [str(p) for p, text in render().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `fraud features render`: {stale}"


def brute_force(raw: pd.DataFrame, tx: pd.Series) -> dict[str, float]:
    """Features of one transaction from raw rows only: rows at or before t (earlier ids on ties), labels
    whose label_time <= t. Deliberately naive, to check the SQL against."""
    t = tx.tx_datetime
    seen = raw[(raw.tx_datetime < t) | ((raw.tx_datetime == t) & (raw.transaction_id <= tx.transaction_id))]
    out: dict[str, float] = {}
    for f in FEATURES:
        if f.kind == "row":
            out[f.name] = {
                "amount": tx.tx_amount,
                "weekend": float(t.isoweekday() >= 6),
                "night": float(t.hour <= 6),
            }[f.op]
        elif f.kind == "window":
            rows = seen[(seen[f.entity] == tx[f.entity]) & (seen.tx_datetime >= t - f.window)]
            if f.agg == "max":  # the earlier transactions only
                earlier = rows[rows.transaction_id != tx.transaction_id]
                out[f.name] = float(earlier.tx_amount.max()) if len(earlier) else 0.0
            else:
                out[f.name] = float(len(rows)) if f.agg == "count" else float(rows.tx_amount.mean())
        elif f.kind == "delayed_window":
            lo, hi = t - f.delay - f.window, t - f.delay
            rows = seen[
                (seen[f.entity] == tx[f.entity]) & (seen.tx_datetime >= lo) & (seen.tx_datetime <= hi)
            ]
            if f.agg == "count":
                out[f.name] = float(len(rows))
            else:
                known = ((rows.tx_fraud == 1) & (rows.label_time <= t)).sum()
                out[f.name] = float(known / len(rows)) if len(rows) else 0.0
    for f in FEATURES:
        if f.kind == "ratio":
            den = out[f.denominator]
            out[f.name] = out[f.numerator] / den if den > 0 else 0.0
    return out


def _load(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with duckdb.connect(str(path), read_only=True) as con:
        raw = con.execute("select * from raw.transactions").df()
        feats = con.execute("select * from main.fct_transaction_features").df()
    return raw, feats


def test_features_match_brute_force_recomputation(warehouse: Path) -> None:
    raw, feats = _load(warehouse)
    assert len(feats) == len(raw) > 10_000
    # Sample across time, plus every fraud-heavy terminal case the sample would otherwise miss.
    sample = feats.sample(250, random_state=0)
    later = feats[feats.terminal_risk_30d > 0].sample(50, random_state=0)
    for _, row in pd.concat([sample, later]).iterrows():
        tx = raw.loc[raw.transaction_id == row.transaction_id].iloc[0]
        expected = brute_force(raw, tx)
        got = {name: row[name] for name in FEATURE_NAMES}
        np.testing.assert_allclose(
            [got[n] for n in FEATURE_NAMES],
            [expected[n] for n in FEATURE_NAMES],
            rtol=1e-9,
            atol=1e-9,
            err_msg=f"transaction {row.transaction_id}",
        )


def _dbt_build(db: Path) -> None:
    env = {"FRAUD_WAREHOUSE": str(db), "PATH": str(Path(sys.executable).parent)}
    subprocess.run(
        [
            str(Path(sys.executable).parent / "dbt"),
            "run",
            "--profiles-dir",
            ".",
            "--target-path",
            str(db.parent / "target"),
            "--log-path",
            str(db.parent / "logs"),
        ],
        cwd=ROOT / "dbt_project",
        env=env,
        check=True,
        capture_output=True,
    )


def test_future_changes_leave_past_features_unchanged(warehouse: Path, tmp_path: Path) -> None:
    copy = tmp_path / "future.duckdb"
    shutil.copy(warehouse, copy)
    _, before = _load(warehouse)
    cutoff = before.tx_datetime.min() + (before.tx_datetime.max() - before.tx_datetime.min()) / 2
    with duckdb.connect(str(copy)) as con:
        # Rewrite the future: other amounts, flipped labels, and labels of past frauds arriving later.
        con.execute(
            "update raw.transactions set tx_amount = tx_amount * 3 + 1, tx_fraud = 1 - tx_fraud "
            "where tx_datetime > ?",
            [cutoff],
        )
        con.execute(
            "update raw.transactions set label_time = ? + interval 1 second "
            "where tx_fraud = 1 and tx_datetime <= ? and label_time > ?",
            [cutoff, cutoff, cutoff],
        )
        n_future = con.execute(
            "select count(*) from raw.transactions where tx_datetime > ?", [cutoff]
        ).fetchone()[0]
    assert n_future > 1000
    _dbt_build(copy)
    _, after = _load(copy)
    cols = ["transaction_id", *FEATURE_NAMES]
    past_before = (
        before.loc[before.tx_datetime <= cutoff, cols].sort_values("transaction_id").reset_index(drop=True)
    )
    past_after = (
        after.loc[after.tx_datetime <= cutoff, cols].sort_values("transaction_id").reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(past_before, past_after, check_exact=False, rtol=1e-12)
    # ...while the future did change (the test would be vacuous otherwise).
    fut_b = before.loc[before.tx_datetime > cutoff].sort_values("transaction_id")
    fut_a = after.loc[after.tx_datetime > cutoff].sort_values("transaction_id")
    assert not np.allclose(fut_b.tx_amount.to_numpy(), fut_a.tx_amount.to_numpy())


@pytest.mark.pipeline
@pytest.mark.parametrize("window", [f for f in FEATURES if f.kind == "window"][:1])
def test_same_instant_transactions_see_only_earlier_ids(tmp_path: Path, window) -> None:
    """Ties: two transactions of one card at the same second are counted as a stream would see them."""
    t = pd.Timestamp("2018-04-10 12:00:00")
    rows = pd.DataFrame(  # noqa: F841 - read by DuckDB's replacement scan below
        {
            "transaction_id": ["a", "b", "c"],
            "tx_datetime": [t - timedelta(days=1), t, t],
            "customer_id": ["1", "1", "1"],
            "terminal_id": ["9", "9", "9"],
            "tx_amount": [10.0, 20.0, 30.0],
            "tx_fraud": [0, 0, 0],
            "label_time": [t + timedelta(days=6), t + timedelta(days=7), t + timedelta(days=7)],
            "tx_fraud_scenario": [0, 0, 0],
            "source": ["t"] * 3,
            "ingested_at": [t] * 3,
        }
    )
    db = tmp_path / "ties.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("create schema raw")
        con.execute("create table raw.transactions as select * from rows")
    _dbt_build(db)
    _, feats = _load(db)
    by_id = feats.set_index("transaction_id")
    # [t - 1 day, t] includes "a" exactly at the boundary; "c" sees "b", "b" does not see "c".
    assert by_id.loc["b", "customer_nb_tx_1d"] == 2
    assert by_id.loc["c", "customer_nb_tx_1d"] == 3
    assert by_id.loc["c", "customer_avg_amount_1d"] == pytest.approx(20.0)
    assert by_id.loc["b", "customer_nb_tx_1h"] == 1
    # The largest earlier amount: "b" sees only "a", "c" sees "b" (the larger), "a" has no history.
    assert by_id.loc["a", "customer_max_amount_30d"] == 0.0
    assert by_id.loc["b", "customer_max_amount_30d"] == 10.0
    assert by_id.loc["c", "customer_max_amount_30d"] == 20.0
    assert by_id.loc["c", "amount_to_customer_max_30d"] == pytest.approx(1.5)
