"""Runtime configuration, read from environment variables so that switching a backend is configuration.

Every path lives under ``FRAUD_DATA_DIR`` (default ``./data``): the DuckDB warehouse, the BentoML model
store, raw source caches, reports. Real servers (Redis, Kafka) are opt-in switches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # "simulator" generates data with ml.data.simulate; "file" reads FRAUD_SOURCE_PATH (CSV or Parquet).
    source: str
    source_path: Path | None
    start_date: str
    end_date: str
    label_delay_days: float
    online_store: str  # "memory" | "redis"
    redis_url: str
    events: str  # "replay" | "kafka"
    kafka_bootstrap: str

    @property
    def warehouse(self) -> Path:
        return Path(_env("FRAUD_WAREHOUSE", str(self.data_dir / "warehouse.duckdb")))

    @property
    def bentoml_home(self) -> Path:
        return Path(_env("BENTOML_HOME", str(self.data_dir / "bentoml")))

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


def get_settings() -> Settings:
    data_dir = Path(_env("FRAUD_DATA_DIR", str(PROJECT_ROOT / "data"))).resolve()
    source_path = os.environ.get("FRAUD_SOURCE_PATH")
    return Settings(
        data_dir=data_dir,
        source=_env("FRAUD_SOURCE", "simulator"),
        source_path=Path(source_path).resolve() if source_path else None,
        start_date=_env("FRAUD_START_DATE", "2018-04-01"),
        end_date=_env("FRAUD_END_DATE", "2018-10-01"),
        label_delay_days=float(_env("FRAUD_LABEL_DELAY_DAYS", "7")),
        online_store=_env("FRAUD_ONLINE_STORE", "memory"),
        redis_url=_env("FRAUD_REDIS_URL", "redis://127.0.0.1:6379/0"),
        events=_env("FRAUD_EVENTS", "replay"),
        kafka_bootstrap=_env("FRAUD_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
    )


def export_tool_env(settings: Settings | None = None) -> Settings:
    """Point dbt and BentoML at the project's data directory (they read these variables themselves)."""
    s = settings or get_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FRAUD_WAREHOUSE", str(s.warehouse))
    os.environ.setdefault("BENTOML_HOME", str(s.bentoml_home))
    return s
