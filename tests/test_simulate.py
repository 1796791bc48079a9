"""Tests of ml.data.simulate (small configs, seconds in all)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from ml.cli.simulate import simulate as simulate_cmd
from ml.data.simulate import (
    COLUMNS,
    DTYPES,
    SimulationConfig,
    compromise_schedule,
    read_transactions,
    simulate,
    write_transactions,
)

SMALL = SimulationConfig(n_customers=200, n_terminals=400, n_days=30, seed=1)
DRIFT_DAY = 30
DRIFT = SimulationConfig(n_customers=300, n_terminals=600, n_days=60, seed=2, drift_start_day=DRIFT_DAY)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def small() -> pl.DataFrame:
    return simulate(SMALL, progress=False)


@pytest.fixture(scope="module")
def medium() -> pl.DataFrame:
    # Big enough for every scenario and a fraud rate near the default's, still well under a second.
    return simulate(SimulationConfig(n_customers=1000, n_terminals=2000, n_days=60, seed=3), progress=False)


@pytest.fixture(scope="module")
def drifted() -> pl.DataFrame:
    return simulate(DRIFT, progress=False)


def _start(cfg: SimulationConfig) -> datetime:
    return datetime.fromisoformat(cfg.start_date)


def _day_index(df: pl.DataFrame, cfg: SimulationConfig) -> np.ndarray:
    return (df["tx_datetime"] - _start(cfg)).dt.total_days().to_numpy()


def test_deterministic_for_a_seed(small: pl.DataFrame) -> None:
    assert_frame_equal(small, simulate(SMALL, progress=False))
    other = simulate(SimulationConfig(n_customers=200, n_terminals=400, n_days=30, seed=2), progress=False)
    assert len(other) != len(small) or not other.equals(small)


def test_fingerprint_is_stable_and_tracks_the_data() -> None:
    assert SMALL.fingerprint() == SimulationConfig(n_customers=200, n_terminals=400, n_days=30,
                                                   seed=1).fingerprint()
    assert SMALL.fingerprint() != SimulationConfig(n_customers=200, n_terminals=400, n_days=30,
                                                   seed=2).fingerprint()
    # Equivalent spellings give one fingerprint; drift knobs without drift change nothing.
    assert SimulationConfig(label_delay="7").fingerprint() == SimulationConfig().fingerprint()
    assert SimulationConfig(genuine_amount_factor=3).fingerprint() == SimulationConfig().fingerprint()
    assert (SimulationConfig(drift_start_day="2018-05-01").fingerprint()
            == SimulationConfig(drift_start_day=30).fingerprint())
    assert len(SMALL.fingerprint()) == 12


def test_columns_and_dtypes_follow_the_contract(small: pl.DataFrame) -> None:
    assert tuple(small.columns) == COLUMNS
    assert small.schema == DTYPES
    ids = small["transaction_id"].to_numpy()
    assert np.array_equal(ids, np.arange(len(small)))  # unique, increasing
    assert small["tx_datetime"].is_sorted()
    assert small["tx_datetime"].min() >= _start(SMALL)
    assert small["tx_datetime"].max() < _start(SMALL) + SMALL.n_days * DAY
    assert set(small["tx_fraud"].unique()) <= {0, 1}
    assert ((small["tx_fraud"] == 1) == (small["tx_fraud_scenario"] > 0)).all()
    assert small["customer_id"].is_between(0, SMALL.n_customers - 1).all()
    assert small["terminal_id"].is_between(0, SMALL.n_terminals - 1).all()


def test_amounts_are_non_negative_cents(small: pl.DataFrame) -> None:
    amount = small["tx_amount"].to_numpy()
    assert (amount >= 0).all()
    assert np.allclose(amount * 100, np.round(amount * 100), atol=1e-6)


def test_fraud_rate_plausible_and_every_scenario_present(medium: pl.DataFrame) -> None:
    # 2,000 terminals instead of 10,000: compromised terminals weigh ~5x more than by default.
    assert 0.01 < medium["tx_fraud"].mean() < 0.06
    assert set(medium["tx_fraud_scenario"].unique()) == {0, 1, 2, 3}
    # Scenario 1 is a strict rule before scenarios 2/3 override the code.
    assert (medium.filter(pl.col("tx_amount") > 220)["tx_fraud"] == 1).all()
    # About 2 (transactions per customer-day) * (1 - 3% out-of-day draws) per customer-day.
    per_day = len(medium) / (1000 * 60)
    assert 1.8 < per_day < 2.1


@pytest.mark.slow
def test_default_config_matches_the_book_scale() -> None:
    df = simulate(progress=False)  # ~1.5 s
    assert 1_700_000 < len(df) < 1_850_000  # the book: 1,754,155
    assert 0.007 < df["tx_fraud"].mean() < 0.01  # the book: ~0.84%
    assert set(df["tx_fraud_scenario"].unique()) == {0, 1, 2, 3}


def test_scenario_2_marks_every_transaction_of_a_compromised_terminal(small: pl.DataFrame) -> None:
    sched = compromise_schedule(SMALL)
    day = _day_index(small, SMALL)
    in_window = np.zeros(len(small), dtype=bool)
    for terminal, start in zip(sched.terminal_ids, sched.terminal_start_days, strict=True):
        in_window |= (small["terminal_id"].to_numpy() == terminal) & (day >= start) & (day < start + 28)
    assert in_window.sum() > 0
    fraud, scenario = small["tx_fraud"].to_numpy(), small["tx_fraud_scenario"].to_numpy()
    assert (fraud[in_window] == 1).all()
    # Only scenario 3 (applied later) may override the code inside a window; scenario 2 lives only there.
    assert np.isin(scenario[in_window], [2, 3]).all()
    assert not (scenario[~in_window] == 2).any()


def test_scenario_3_stays_within_compromised_customer_windows(medium: pl.DataFrame) -> None:
    cfg = SimulationConfig(n_customers=1000, n_terminals=2000, n_days=60, seed=3)
    sched = compromise_schedule(cfg)
    day = _day_index(medium, cfg)
    cust = medium["customer_id"].to_numpy()
    in_window = np.zeros(len(medium), dtype=bool)
    for customer, start in zip(sched.customer_ids, sched.customer_start_days, strict=True):
        in_window |= (cust == customer) & (day >= start) & (day < start + 14)
    s3 = medium["tx_fraud_scenario"].to_numpy() == 3
    assert s3.sum() > 0
    assert not (s3 & ~in_window).any()
    # A third of each day's group (n // 3), overlapping windows picked once.
    assert 0.30 < s3.sum() / in_window.sum() < 0.36


def test_label_time_fixed_delay_by_default(small: pl.DataFrame) -> None:
    assert ((small["label_time"] - small["tx_datetime"]) == timedelta(days=7)).all()


def test_label_time_uniform_delay() -> None:
    cfg = SimulationConfig(n_customers=200, n_terminals=400, n_days=30, seed=1, label_delay="uniform:1:14")
    df = simulate(cfg, progress=False)
    delay = df["label_time"] - df["tx_datetime"]
    assert delay.min() >= timedelta(days=1)
    assert delay.max() <= timedelta(days=14)
    assert delay.n_unique() > 100
    # The label delay does not change the transactions themselves.
    base = simulate(SMALL, progress=False)
    assert_frame_equal(df.drop("label_time"), base.drop("label_time"))


@pytest.mark.parametrize("bad", ["", "fixed", "uniform:5", "uniform:9:2", "gamma:1:2", "fixed:-1"])
def test_bad_label_delay_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        SimulationConfig(label_delay=bad)


def test_bad_drift_day_is_rejected() -> None:
    with pytest.raises(ValueError):
        SimulationConfig(n_days=30, drift_start_day=30)
    with pytest.raises(ValueError):
        SimulationConfig(drift_start_day="2017-01-01")


def test_drift_injects_card_testing_only_from_the_drift_day(drifted: pl.DataFrame) -> None:
    day = _day_index(drifted, DRIFT)
    s4 = drifted["tx_fraud_scenario"].to_numpy() == 4
    assert s4.sum() > 0
    assert day[s4].min() >= DRIFT_DAY
    assert set(np.unique(day[s4])) == set(range(DRIFT_DAY, DRIFT.n_days))  # every drift day has bursts
    card_testing = drifted.with_columns(day=pl.Series(day)).filter(pl.Series(s4))
    assert (card_testing["tx_fraud"] == 1).all()
    assert card_testing["tx_amount"].is_between(1, 10).all()
    # Bursts: each (customer, day) of card testing has 5-15 transactions within a few minutes.
    bursts = card_testing.group_by("customer_id", "day").agg(
        size=pl.len(),
        span=pl.col("tx_datetime").max() - pl.col("tx_datetime").min(),
        terminals=pl.col("terminal_id").n_unique(),
    )
    assert bursts["size"].is_between(5, 15).all()
    assert (bursts["span"] <= timedelta(minutes=8)).all()
    assert (bursts["terminals"] == 1).all()
    assert len(bursts) == DRIFT.card_testing_customers_per_day * (DRIFT.n_days - DRIFT_DAY)


def test_drift_shifts_genuine_behaviour(drifted: pl.DataFrame) -> None:
    day = _day_index(drifted, DRIFT)
    genuine = drifted["tx_fraud"].to_numpy() == 0
    before, after = genuine & (day < DRIFT_DAY), genuine & (day >= DRIFT_DAY)
    amount = drifted["tx_amount"].to_numpy()
    ratio = amount[after].mean() / amount[before].mean()
    assert 1.3 < ratio < 1.7  # genuine_amount_factor = 1.5
    night = drifted["tx_datetime"].dt.hour().to_numpy() < 6
    assert night[after].mean() > night[before].mean() + 0.1


def test_drift_leaves_rows_before_the_drift_day_untouched(drifted: pl.DataFrame) -> None:
    base = simulate(SimulationConfig(n_customers=300, n_terminals=600, n_days=60, seed=2), progress=False)
    cut = _start(DRIFT) + DRIFT_DAY * DAY
    assert_frame_equal(drifted.filter(pl.col("tx_datetime") < cut), base.filter(pl.col("tx_datetime") < cut))
    assert not (base["tx_fraud_scenario"] == 4).any()


def test_drift_day_as_date_equals_index(drifted: pl.DataFrame) -> None:
    cfg = SimulationConfig(n_customers=300, n_terminals=600, n_days=60, seed=2, drift_start_day="2018-05-01")
    assert cfg.drift_day() == DRIFT_DAY
    assert_frame_equal(simulate(cfg, progress=False), drifted)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_writers_round_trip(small: pl.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = write_transactions(small, tmp_path / "sub" / f"tx{suffix}")
    assert path.exists()
    assert not list(path.parent.glob(".*.tmp"))
    assert_frame_equal(read_transactions(path), small)


def test_writer_rejects_unknown_extension(small: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_transactions(small, tmp_path / "tx.json")


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    simulate(SimulationConfig(n_customers=20, n_terminals=40, n_days=3), progress=True)
    captured = capsys.readouterr()
    assert "simulate" in captured.err
    assert captured.out == ""
    simulate(SimulationConfig(n_customers=20, n_terminals=40, n_days=3), progress=False)
    assert capsys.readouterr().err == ""


def test_cli_writes_file_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "tx.parquet"
    result = CliRunner().invoke(simulate_cmd, [
        "--n-customers", "200", "--n-terminals", "400", "--n-days", "30", "--seed", "1",
        "--out", str(out), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    df = read_transactions(out)
    assert_frame_equal(df, simulate(SMALL, progress=False))
    assert f"{len(df):,} rows" in result.output
    assert "frauds" in result.output and "%" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_drift_and_bad_options(tmp_path: Path) -> None:
    out = tmp_path / "tx.csv"
    result = CliRunner().invoke(simulate_cmd, [
        "--n-customers", "100", "--n-terminals", "200", "--n-days", "20", "--drift-start-day", "2018-04-11",
        "--label-delay", "uniform:1:14", "--out", str(out), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    df = read_transactions(out)
    assert (df["tx_fraud_scenario"] == 4).any()
    assert df.filter(pl.col("tx_fraud_scenario") == 4)["tx_datetime"].min() >= datetime(2018, 4, 11)
    bad = CliRunner().invoke(simulate_cmd, ["--label-delay", "nope", "--out", str(out), "--no-progress"])
    assert bad.exit_code != 0
