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
    """SimulationConfig from the FRAUD_SIM_* settings (small data for tests, drift for the drift demo)."""
    from ml.data.simulate import SimulationConfig

    kwargs: dict[str, object] = {"start_date": settings.start_date}
    for field, value in (
        ("n_customers", settings.sim_customers),
        ("n_terminals", settings.sim_terminals),
        ("n_days", settings.sim_days),
        ("seed", settings.sim_seed),
        ("drift_start_day", settings.sim_drift_start_day),
        ("label_delay", settings.sim_label_delay),
    ):
        if value is not None:
            kwargs[field] = value
    return SimulationConfig(**kwargs)
