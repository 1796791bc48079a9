"""``fraud simulate``: write a simulated transaction file (``ml.data.simulate``), one option per config field."""

from __future__ import annotations

import time
from pathlib import Path

import click
import polars as pl

from ml.data.simulate import SimulationConfig, write_transactions
from ml.data.simulate import simulate as run_simulation

_D = SimulationConfig()


def _drift_day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | str | None:
    # A day index stays an int; anything else is an ISO date that SimulationConfig resolves.
    if value is None:
        return None
    return int(value) if value.strip().lstrip("-").isdigit() else value


@click.command("simulate", help="Simulate card transactions (Le Borgne et al. ch. 3, drift optional).")
@click.option("--n-customers", type=click.IntRange(min=1), default=_D.n_customers, show_default=True)
@click.option("--n-terminals", type=click.IntRange(min=1), default=_D.n_terminals, show_default=True)
@click.option("--n-days", type=click.IntRange(min=1), default=_D.n_days, show_default=True)
@click.option("--start-date", default=_D.start_date, show_default=True, help="First day (ISO date, UTC).")
@click.option("--radius", type=float, default=_D.radius, show_default=True,
              help="A customer uses the terminals within this distance (grid is 100 x 100).")
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option("--label-delay", default=_D.label_delay, show_default=True,
              help="'fixed:D' or 'uniform:LO:HI' (days from transaction to known label).")
@click.option("--drift-start-day", default=None, callback=_drift_day,
              help="Inject drift from this day index (0-based) or ISO date; omitted = no drift.")
@click.option("--card-testing-customers-per-day", type=click.IntRange(min=0),
              default=_D.card_testing_customers_per_day, show_default=True,
              help="Drift: customers whose card is tested (burst of small frauds) each day.")
@click.option("--genuine-amount-factor", type=float, default=_D.genuine_amount_factor, show_default=True,
              help="Drift: genuine amounts are multiplied by this.")
@click.option("--drift-night-fraction", type=click.FloatRange(0, 1), default=_D.drift_night_fraction,
              show_default=True, help="Drift: share of genuine transactions moved to 00:00-06:00.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output file: .csv, .csv.gz or .parquet.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def simulate(n_customers: int, n_terminals: int, n_days: int, start_date: str, radius: float, seed: int,
             label_delay: str, drift_start_day: int | str | None, card_testing_customers_per_day: int,
             genuine_amount_factor: float, drift_night_fraction: float, out: Path, no_progress: bool) -> None:
    t0 = time.perf_counter()
    try:
        config = SimulationConfig(
            n_customers=n_customers, n_terminals=n_terminals, n_days=n_days, start_date=start_date,
            radius=radius, seed=seed, label_delay=label_delay, drift_start_day=drift_start_day,
            card_testing_customers_per_day=card_testing_customers_per_day,
            genuine_amount_factor=genuine_amount_factor, drift_night_fraction=drift_night_fraction,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    df = run_simulation(config, progress=not no_progress)
    path = write_transactions(df, out)
    frauds = int(df["tx_fraud"].sum())
    rate = frauds / len(df) if len(df) else 0.0
    by_scenario = df.filter(pl.col("tx_fraud") == 1)["tx_fraud_scenario"].value_counts().sort("tx_fraud_scenario")
    scenarios = " ".join(f"s{k}={v}" for k, v in by_scenario.iter_rows())
    click.echo(f"{len(df):,} rows, {frauds:,} frauds ({rate:.3%}; {scenarios}) -> {path} "
               f"in {time.perf_counter() - t0:.1f}s [config {config.fingerprint()}]")
