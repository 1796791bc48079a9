"""Where transactions come from: the simulator (cached as Parquet by config fingerprint) or a user's file."""

from __future__ import annotations

from pathlib import Path

from ml.settings import Settings


def resolve_source(settings: Settings, simulation: object | None = None, progress: bool = True) -> Path:
    """Return a CSV/Parquet path holding the configured source, simulating (once) when needed."""
    if settings.source == "file":
        if settings.source_path is None:
            raise ValueError("FRAUD_SOURCE=file needs FRAUD_SOURCE_PATH (a .csv or .parquet file)")
        if not settings.source_path.exists():
            raise FileNotFoundError(f"FRAUD_SOURCE_PATH {settings.source_path} does not exist")
        return settings.source_path
    if settings.source != "simulator":
        raise ValueError(f"FRAUD_SOURCE must be 'simulator' or 'file', not {settings.source!r}")
    from ml.data.simulate import SimulationConfig, simulate, write_transactions

    config = simulation if isinstance(simulation, SimulationConfig) else simulation_from_env(settings)
    path = settings.raw_dir / f"simulated-{config.fingerprint()}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.parquet")
        write_transactions(simulate(config, progress=progress), tmp)
        tmp.rename(path)  # atomic: a half-written cache is never read
    return path


def simulation_from_env(settings: Settings) -> object:
    """SimulationConfig from FRAUD_SIM_* variables (small data for tests, drift for the drift demo)."""
    import os

    from ml.data.simulate import SimulationConfig

    env = os.environ
    kwargs: dict[str, object] = {"start_date": settings.start_date}
    for field, var, cast in (
        ("n_customers", "FRAUD_SIM_CUSTOMERS", int),
        ("n_terminals", "FRAUD_SIM_TERMINALS", int),
        ("n_days", "FRAUD_SIM_DAYS", int),
        ("seed", "FRAUD_SIM_SEED", int),
        ("drift_start_day", "FRAUD_SIM_DRIFT_START_DAY", int),
        ("label_delay", "FRAUD_SIM_LABEL_DELAY", str),
    ):
        if env.get(var):
            kwargs[field] = cast(env[var])
    return SimulationConfig(**kwargs)
