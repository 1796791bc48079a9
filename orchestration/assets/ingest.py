"""Ingest stage: land the configured source (simulator or user file) into raw.transactions."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from ml.contract import to_utc_naive
from ml.data.ingest import land
from ml.data.sources import resolve_source
from ml.settings import get_settings
from orchestration.partitions import daily_partitions


class IngestConfig(dg.Config):
    """Overrides for the source chosen by FRAUD_SOURCE / FRAUD_SOURCE_PATH (see README)."""

    source: str | None = None  # "simulator" | "file"
    path: str | None = None


@dg.asset(
    key="raw_transactions",
    group_name="ingest",
    partitions_def=daily_partitions,
    # A backfill of many days is one run reading the source once, not one run per day.
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"duckdb"},
    description="Validated transactions of the day(s); bad rows go to raw.quarantine with a reason.",
)
def raw_transactions(
    context: dg.AssetExecutionContext, config: IngestConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    from pathlib import Path

    settings = get_settings()
    if config.source or config.path:
        settings = settings.model_copy(update={
            "source": config.source or ("file" if config.path else settings.source),
            "source_path": Path(config.path).resolve() if config.path else settings.source_path,
        })
    window = context.partition_time_window
    path = resolve_source(settings)
    context.log.info(f"Landing {path} for [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d})")
    Path(duckdb.database).parent.mkdir(parents=True, exist_ok=True)  # the first write creates the warehouse
    with duckdb.get_connection() as con:
        # The run's whole range (one run for a multi-day backfill): rows outside it are quarantined.
        stats = land(con, path, to_utc_naive(window.start), to_utc_naive(window.end),
                     settings.label_delay_days)
    if stats.quarantined_total:
        context.log.warning(f"Quarantined {stats.quarantined_total} row(s): {stats.quarantined}")
    return dg.MaterializeResult(
        metadata={
            "source": str(path),
            "rows_in": stats.rows_in,
            "landed": stats.landed,
            "quarantined": stats.quarantined_total,
            "rows": stats.rows,
            "frauds": stats.frauds,
            "quarantine_reasons": dg.MetadataValue.json(stats.quarantined),
            "days": len(context.partition_keys),
        }
    )

