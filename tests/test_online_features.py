"""The online feature path on hand-made edge cases, checked against dbt run on the same rows.

Same-instant ties (ids compared as strings), window bounds exactly at t - w and t - d - w, a label known
exactly at t, a label at its own transaction's time, idempotent re-delivery and cold start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import private_redis_store  # pytest imports tests/conftest.py as `conftest`

from ml.features.spec import FEATURE_NAMES
from ml.online.features import OnlineFeatures
from ml.online.parity import replay_parity
from ml.online.store import MemoryStore
from ml.settings import PROJECT_ROOT

T0 = datetime(2018, 4, 2, 10, 0, 0)
D, H, US = timedelta(days=1), timedelta(hours=1), timedelta(microseconds=1)


def _rows() -> list[tuple]:
    """(id, time, customer, terminal, amount, fraud, label_time)."""
    f_label = T0 + 8 * D  # fraud at T0 on terminal T1, known exactly when "g" happens
    return [
        ("a", T0, "C1", "T1", 10.0, 1, f_label),
        ("b", T0, "C1", "T2", 30.0, 0, T0 + 7 * D),
        ("10", T0 + H, "C2", "T1", 5.0, None, None),   # "10" < "9" as strings: 10 sees nothing of 9
        ("9", T0 + H, "C2", "T1", 7.0, None, None),
        ("c", T0 + D, "C1", "T3", 20.0, None, None),    # exactly t - 1d from a and b: both in its 1d window
        ("d", T0 + D + US, "C1", "T3", 40.0, None, None),  # a and b just left its 1d window
        ("e", T0 + 2 * D, "C3", "T4", 1.0, 1, T0 + 2 * D),  # labelled at its own time
        ("g", T0 + 8 * D, "C4", "T1", 50.0, None, None),  # [t-8d, t-7d] = [T0, T0+1d]: a (label at t) counts
        ("h", T0 + 8 * D - US, "C4", "T1", 60.0, None, None),  # label not yet known
        ("i", T0 + 10 * D + H, "C5", "T4", 3.0, None, None),  # e at t - 7d - 1d - 1h: outside 1d, inside 7d
        ("j", T0 + 11 * D, "C5", "T4", 3.0, 0, T0 + 11 * D),
    ]


@pytest.fixture(scope="module")
def edge_warehouse(tmp_path_factory) -> Path:
    """A DuckDB file with the hand-made rows, with dbt's feature models built on it (the real SQL)."""
    tmp = tmp_path_factory.mktemp("edge")
    db = tmp / "edge.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("create schema raw")
        con.execute("create table raw.transactions (transaction_id varchar, tx_datetime timestamp, "
                    "customer_id varchar, terminal_id varchar, tx_amount double, tx_fraud integer, "
                    "label_time timestamp)")
        con.executemany("insert into raw.transactions values (?, ?, ?, ?, ?, ?, ?)", _rows())
    env = {**os.environ, "FRAUD_WAREHOUSE": str(db)}
    dbt = str(Path(sys.executable).parent / "dbt")
    proj = PROJECT_ROOT / "dbt_project"
    res = subprocess.run([dbt, "run", "--project-dir", str(proj), "--profiles-dir", str(proj),
                          "--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs"),
                          "--select", "+fct_transaction_features"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]
    return db


def _dbt_row(db: Path, tid: str) -> dict[str, float]:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(f"select {', '.join(FEATURE_NAMES)} from main.fct_transaction_features "
                          "where transaction_id = ?", [tid]).fetchone()
    return dict(zip(FEATURE_NAMES, row, strict=True))


@pytest.mark.pipeline
def test_edge_cases_match_dbt(edge_warehouse: Path) -> None:
    report = replay_parity(edge_warehouse, MemoryStore())
    assert report.compared == len(_rows())
    assert report.ok, (report.by_feature, report.examples)


@pytest.mark.pipeline
def test_edge_case_values(edge_warehouse: Path) -> None:
    b, c, d = (_dbt_row(edge_warehouse, t) for t in ("b", "c", "d"))
    assert (b["customer_nb_tx_1d"], b["customer_avg_amount_1d"]) == (2.0, 20.0)  # a before b at one instant
    assert c["customer_nb_tx_1d"] == 3.0 and d["customer_nb_tx_1d"] == 2.0
    assert _dbt_row(edge_warehouse, "10")["customer_nb_tx_1h"] == 1.0
    assert _dbt_row(edge_warehouse, "9")["customer_nb_tx_1h"] == 2.0
    # Largest earlier amount: "9" sees "10" (smaller id at its instant), "10" sees nothing; "d" sees a, b, c.
    assert _dbt_row(edge_warehouse, "9")["customer_max_amount_30d"] == 5.0
    assert _dbt_row(edge_warehouse, "10")["customer_max_amount_30d"] == 0.0
    assert (b["customer_max_amount_30d"], d["customer_max_amount_30d"]) == (10.0, 30.0)
    g, h = _dbt_row(edge_warehouse, "g"), _dbt_row(edge_warehouse, "h")
    assert (g["terminal_nb_tx_1d"], g["terminal_risk_1d"]) == (3.0, 1 / 3)  # a, 10, 9; a's label known at t
    assert h["terminal_risk_1d"] == 0.0 and h["terminal_nb_tx_1d"] == 3.0
    i = _dbt_row(edge_warehouse, "i")
    assert (i["terminal_nb_tx_1d"], i["terminal_risk_7d"]) == (0.0, 1.0)


def _tx(tid: str, t: datetime, cust: str = "C", term: str = "T", amount: float = 10.0) -> dict:
    return {"transaction_id": tid, "tx_datetime": t, "customer_id": cust, "terminal_id": term,
            "tx_amount": amount}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def online(request):
    if request.param == "memory":
        yield OnlineFeatures(MemoryStore())
        return
    store = private_redis_store("online")
    yield OnlineFeatures(store)
    store.clear()


def test_idempotent_and_cold_start(online: OnlineFeatures) -> None:
    cold = online.features_for([_tx("1", T0, amount=25.0)])[0]
    assert cold["customer_nb_tx_30d"] == 1.0 and cold["customer_avg_amount_30d"] == 25.0
    assert cold["terminal_nb_tx_30d"] == 0.0 and cold["terminal_risk_30d"] == 0.0
    assert cold["amount_to_customer_avg_30d"] == 1.0
    assert online.features_for([_tx("1", T0, amount=25.0)])[0] == cold  # re-delivery does not double count
    second = online.features_for([_tx("2", T0 + H, amount=35.0)])[0]
    assert second["customer_nb_tx_1d"] == 2.0 and second["customer_avg_amount_1d"] == 30.0
    peek = online.peek_features([_tx("3", T0 + 2 * H)])[0]
    assert peek["customer_nb_tx_1d"] == 3.0
    assert online.peek_features([_tx("3", T0 + 2 * H)])[0] == peek  # read-only: nothing recorded


def test_labels(online: OnlineFeatures) -> None:
    online.features_for([_tx("f", T0)])
    assert online.apply_labels([("f", 1, T0 + 7 * D)])[0]
    assert not online.apply_labels([("unknown", 1, T0)])[0]
    assert online.peek_features([_tx("x", T0 + 7 * D)])[0]["terminal_risk_1d"] == 1.0
    assert online.peek_features([_tx("x", T0 + 7 * D - US)])[0]["terminal_risk_1d"] == 0.0
    assert online.apply_labels([("f", 0, T0 + 7 * D)])[0]  # a corrected label replaces the earlier one
    assert online.peek_features([_tx("x", T0 + 7 * D)])[0]["terminal_risk_1d"] == 0.0


@pytest.mark.redis
def test_redis_batches_equal_one_by_one() -> None:
    """The batched Redis call (each entity's window read once per call, calls of max_call_txs) gives every
    transaction the features the in-process store gives it one at a time: same-instant peers, a re-delivered
    transaction inside a call, a label between batches, calls cut mid-instant."""
    store = private_redis_store("batch")
    store.max_call_txs = 7  # several calls per batch, one boundary inside a same-instant run
    txs = []
    for k in range(40):
        t = T0 + (k // 3) * 5 * H  # runs of 3 transactions at one instant
        txs.append(_tx(f"t{k:02d}", t, cust=f"C{k % 3}", term=f"T{k % 2}", amount=5.0 + 7 * (k % 5)))
    txs.insert(15, dict(txs[13]))  # re-delivered at its own instant (time order kept: the batched path)
    first, second = txs[:25], txs[25:]
    label = ("t05", 1, T0 + 2 * D)
    calls = []
    many = store._batch_call
    store._batch_call = lambda chunk, write, **kw: calls.append(len(chunk)) or many(chunk, write, **kw)
    try:
        batched = OnlineFeatures(store).features_for(first)
        OnlineFeatures(store).apply_labels([label])
        batched += OnlineFeatures(store).features_for(second)
    finally:
        store.clear()
    single = OnlineFeatures(MemoryStore())
    expected = [single.features_for([tx])[0] for tx in first]
    single.apply_labels([label])
    expected += [single.features_for([tx])[0] for tx in second]
    assert len(batched) == len(expected) == len(txs)
    for tx, got, want in zip(txs, batched, expected, strict=True):
        assert got == pytest.approx(want, rel=0, abs=1e-9), tx["transaction_id"]
    assert calls == [7, 7, 7, 4, 7, 7, 2]  # every transaction went through the batched call
    assert batched[15] == pytest.approx(batched[13], abs=1e-9)  # idempotent re-delivery


@pytest.mark.redis
def test_redis_script_reloaded_after_flush() -> None:
    """The batch script runs on the store's own connection: a Redis that lost its scripts (restart, SCRIPT
    FLUSH) gets it loaded again, and the call's features are those of the in-process store."""
    store = private_redis_store("noscript")
    txs = [_tx(f"s{k}", T0 + k * H, cust="C1", term="T1", amount=10.0 + k) for k in range(4)]
    try:
        first = OnlineFeatures(store).features_matrix(txs[:2])
        store.client.script_flush()
        second = OnlineFeatures(store).features_matrix(txs[2:])
    finally:
        store.clear()
    single = OnlineFeatures(MemoryStore())
    want = [OnlineFeatures.vector(single.features_for([tx])[0]) for tx in txs]
    assert np.allclose(np.vstack([first, second]), want, rtol=0, atol=1e-9)
