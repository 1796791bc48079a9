"""Land transactions from a CSV/Parquet file into the warehouse, quarantining bad rows with a reason.

Validation runs over the whole source before the partition slice is taken, so a duplicate
``transaction_id`` is caught even when its twin lies in another day. Nothing is dropped silently: every
source row ends up in ``raw.transactions`` or in ``raw.quarantine`` (rows outside the slice wait for
their own partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

REQUIRED = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")

DDL = """
create schema if not exists raw;
create table if not exists raw.transactions (
    -- Uniqueness is enforced by land() and dbt's unique test; a PK index would slow bulk loads.
    transaction_id varchar not null,
    tx_datetime timestamp not null,
    customer_id varchar not null,
    terminal_id varchar not null,
    tx_amount double not null,
    tx_fraud integer,
    label_time timestamp,
    tx_fraud_scenario integer,
    source varchar,
    ingested_at timestamp default current_timestamp
);
create table if not exists raw.quarantine (
    reason varchar not null,
    transaction_id varchar,
    tx_datetime varchar,
    customer_id varchar,
    terminal_id varchar,
    tx_amount varchar,
    tx_fraud varchar,
    label_time varchar,
    source varchar,
    partition_start timestamp,
    quarantined_at timestamp default current_timestamp
);
"""


@dataclass(frozen=True)
class IngestStats:
    rows: int
    frauds: int
    quarantined: dict[str, int]

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


def _reader(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return f"read_parquet('{path}')"
    if suffix in (".csv", ".gz"):
        # all_varchar: bad values must survive reading so they can be quarantined with a reason.
        return f"read_csv('{path}', all_varchar = true, header = true)"
    raise ValueError(f"unsupported source file {path} (use .csv or .parquet)")


def _source_view(con: duckdb.DuckDBPyConnection, path: Path, label_delay_days: float) -> None:
    cols = {r[0] for r in con.execute(f"describe select * from {_reader(path)}").fetchall()}
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; expected {list(REQUIRED)}")
    opt = {
        c: (f"cast({c} as varchar)" if c in cols else "null")
        for c in ("tx_fraud", "label_time", "tx_fraud_scenario")
    }
    con.execute(f"""
        create or replace temp view src as
        select
            row_number() over () as src_row,
            cast(transaction_id as varchar) as transaction_id,
            cast(tx_datetime as varchar) as tx_datetime_raw,
            cast(customer_id as varchar) as customer_id,
            cast(terminal_id as varchar) as terminal_id,
            cast(tx_amount as varchar) as tx_amount_raw,
            {opt["tx_fraud"]} as tx_fraud_raw,
            {opt["label_time"]} as label_time_raw,
            {opt["tx_fraud_scenario"]} as scenario_raw
        from {_reader(path)}
    """)
    con.execute(f"""
        create or replace temp table checked as
        with typed as (
            select *,
                try_cast(tx_datetime_raw as timestamp) as tx_datetime,
                try_cast(tx_amount_raw as double) as tx_amount,
                try_cast(tx_fraud_raw as integer) as tx_fraud,
                try_cast(label_time_raw as timestamp) as label_time,
                try_cast(scenario_raw as integer) as tx_fraud_scenario
            from src
        ),
        ranked as (
            select *, row_number() over (partition by transaction_id order by src_row) as dup_rank
            from typed
        )
        select *,
            case
                when transaction_id is null or trim(transaction_id) = '' then 'null transaction_id'
                when customer_id is null or trim(customer_id) = '' then 'null customer_id'
                when terminal_id is null or trim(terminal_id) = '' then 'null terminal_id'
                when tx_datetime_raw is null then 'null tx_datetime'
                when tx_datetime is null then 'unparseable tx_datetime'
                when tx_amount_raw is null then 'null tx_amount'
                when tx_amount is null or isnan(tx_amount) or isinf(tx_amount) then 'non-numeric tx_amount'
                when tx_amount < 0 then 'negative tx_amount'
                when tx_fraud_raw is not null and (tx_fraud is null or tx_fraud not in (0, 1))
                    then 'tx_fraud not 0/1'
                when label_time_raw is not null and label_time is null then 'unparseable label_time'
                when label_time < tx_datetime then 'label_time before tx_datetime'
                when dup_rank > 1 then 'duplicate transaction_id'
            end as reason,
            -- Labels without a label_time are assumed known after the configured delay.
            coalesce(label_time, case when tx_fraud is not null
                then tx_datetime + to_seconds(cast({label_delay_days} * 86400 as bigint)) end)
                as label_known_at
        from ranked
    """)


def land(
    con: duckdb.DuckDBPyConnection,
    source_path: Path,
    start: str,
    end: str,
    label_delay_days: float = 7.0,
) -> IngestStats:
    """Replace partition slice [start, end) of raw.transactions from ``source_path``; idempotent."""
    con.execute(DDL)
    _source_view(con, Path(source_path), label_delay_days)
    src = str(source_path)
    in_slice = f"tx_datetime >= timestamp '{start}' and tx_datetime < timestamp '{end}'"
    con.execute("begin")
    con.execute(f"delete from raw.transactions where {in_slice}")
    # Rows with no usable timestamp belong to no partition: quarantine them once per source.
    con.execute(
        f"delete from raw.quarantine where partition_start >= timestamp '{start}' "
        f"and partition_start < timestamp '{end}' and source = ?",
        [src],
    )
    con.execute("delete from raw.quarantine where partition_start is null and source = ?", [src])
    con.execute(
        f"""
        insert into raw.quarantine (reason, transaction_id, tx_datetime, customer_id, terminal_id,
                                    tx_amount, tx_fraud, label_time, source, partition_start)
        select reason, transaction_id, tx_datetime_raw, customer_id, terminal_id, tx_amount_raw,
               tx_fraud_raw, label_time_raw, ?, case when tx_datetime is not null
                   then date_trunc('day', tx_datetime) end
        from checked
        where reason is not null and (tx_datetime is null or ({in_slice}))
    """,
        [src],
    )
    # A transaction_id already landed from another slice or source is a duplicate, not an update.
    con.execute(
        f"""
        insert into raw.quarantine (reason, transaction_id, tx_datetime, customer_id, terminal_id,
                                    tx_amount, tx_fraud, label_time, source, partition_start)
        select 'duplicate transaction_id (already landed)', transaction_id, tx_datetime_raw, customer_id,
               terminal_id, tx_amount_raw, tx_fraud_raw, label_time_raw, ?, date_trunc('day', tx_datetime)
        from checked
        where reason is null and {in_slice}
        and transaction_id in (select transaction_id from raw.transactions)
    """,
        [src],
    )
    con.execute(
        f"""
        insert into raw.transactions (transaction_id, tx_datetime, customer_id, terminal_id, tx_amount,
                                      tx_fraud, label_time, tx_fraud_scenario, source)
        select transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud,
               label_known_at, tx_fraud_scenario, ?
        from checked
        where reason is null and {in_slice}
        and transaction_id not in (select transaction_id from raw.transactions)
    """,
        [src],
    )
    con.execute("commit")
    rows, frauds = con.execute(
        f"select count(*), coalesce(sum(tx_fraud), 0) from raw.transactions where {in_slice}"
    ).fetchone()
    quarantined = dict(
        con.execute(
            f"""
        select reason, count(*) from raw.quarantine
        where source = ? and (partition_start is null or (partition_start >= timestamp '{start}'
              and partition_start < timestamp '{end}'))
        group by reason order by reason
    """,
            [src],
        ).fetchall()
    )
    return IngestStats(
        rows=int(rows), frauds=int(frauds), quarantined={k: int(v) for k, v in quarantined.items()}
    )
