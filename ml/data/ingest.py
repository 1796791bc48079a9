"""Land transactions from a CSV/Parquet file into the warehouse, quarantining bad rows with a reason.

Every row of the source gets exactly one outcome per run: landed in ``raw.transactions`` or quarantined
with a reason, so ``rows_in == landed + quarantined`` (checked here, shown in the asset's metadata).
Validation is set-based SQL over the whole source (a duplicate ``transaction_id`` is caught even when its
twin lies in another day) and applies the shared contract (``ml.contract``): ids of 1..MAX_ID_LEN printable
characters, finite amounts in [0, FRAUD_MAX_AMOUNT], timestamps in [FRAUD_MIN_TX_TIME, now +
FRAUD_MAX_TX_AHEAD_S] (offsets converted to UTC, a naive time is UTC), labels exactly 0 or 1.

Valid rows outside the run's partition range (a multi-day backfill is one run: its whole range) are
quarantined as ``outside_partitions``. ``raw.quarantine`` holds, per source, what is not landed: a re-run
replaces the source's records (idempotent), and an ``outside_partitions`` row is recorded only while its
``transaction_id`` is not landed (the run that covers its day lands it).

No value reaches SQL text: the file is read through DuckDB's relation API and bounds are parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from ml.contract import FORBIDDEN_ID_CHARS, MAX_ID_LEN, limits

REQUIRED = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
OPTIONAL = ("tx_fraud", "label_time", "tx_fraud_scenario")
OUTSIDE = "outside_partitions"
ALREADY_LANDED = "duplicate transaction_id (already landed)"
# Whitespace-only ids (controls are refused by FORBIDDEN_ID_CHARS already).
_BLANK = r"^\p{Zs}*$"

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
    rows: int  # landed rows (the slice is replaced, so: the slice's rows)
    frauds: int
    quarantined: dict[str, int]  # this run's rows per reason
    rows_in: int = 0
    landed: int = 0
    recorded: dict[str, int] = field(default_factory=dict)  # reason -> rows written to raw.quarantine

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


def _relation(con: duckdb.DuckDBPyConnection, path: Path) -> duckdb.DuckDBPyRelation:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} not found")
    if suffix == ".parquet":
        return con.read_parquet(str(path))
    if suffix in (".csv", ".gz"):
        # all_varchar: bad values must survive reading so they can be quarantined with a reason.
        return con.read_csv(str(path), all_varchar=True, header=True)
    raise ValueError(f"unsupported source file {path.name} (use .csv or .parquet)")


# Each id column: the same four checks, in this order (the first failing one is the row's reason).
_ID_CHECKS = "\n".join(
    f"""                when {c} is null or {c} = '' then 'null {c}'
                when length({c}) > $max_id_len then '{c} too long'
                when regexp_matches({c}, $forbidden) then '{c} has control or format characters'
                when regexp_matches({c}, $blank) then 'blank {c}'"""
    for c in ("transaction_id", "customer_id", "terminal_id")
)

CHECKED = f"""
create or replace temp table checked as
with src as (
    select
        row_number() over () as src_row,
        cast("transaction_id" as varchar) as transaction_id,
        cast("tx_datetime" as varchar) as tx_datetime_raw,
        cast("customer_id" as varchar) as customer_id,
        cast("terminal_id" as varchar) as terminal_id,
        cast("tx_amount" as varchar) as tx_amount_raw,
        cast("tx_fraud" as varchar) as tx_fraud_raw,
        cast("label_time" as varchar) as label_time_raw,
        cast("tx_fraud_scenario" as varchar) as scenario_raw
    from ingest_source
),
typed as (
    select *,
        -- TimeZone is UTC on this connection: an offset is converted, a naive time is taken as UTC.
        cast(try_cast(tx_datetime_raw as timestamptz) as timestamp) as tx_datetime,
        try_cast(tx_amount_raw as double) as tx_amount,
        try_cast(tx_fraud_raw as double) as fraud_num,
        cast(try_cast(label_time_raw as timestamptz) as timestamp) as label_time,
        try_cast(scenario_raw as integer) as tx_fraud_scenario
    from src
),
counted as (
    select *,
        row_number() over (partition by transaction_id order by src_row) as dup_rank,
        count(*) over (partition by transaction_id) as dup_n
    from typed
),
-- Copies of one transaction_id that differ in content: none can be trusted, every copy is quarantined.
conflicting as (
    select transaction_id as conflict_id from counted
    where dup_n > 1 and transaction_id is not null
    group by transaction_id
    having count(distinct row(coalesce(cast(tx_datetime as varchar), tx_datetime_raw), customer_id,
                              terminal_id, coalesce(cast(tx_amount as varchar), tx_amount_raw),
                              coalesce(cast(fraud_num as varchar), tx_fraud_raw),
                              coalesce(cast(label_time as varchar), label_time_raw), scenario_raw)) > 1
),
judged as (
    select c.*,
        case
{_ID_CHECKS}
                when tx_datetime_raw is null then 'null tx_datetime'
                when tx_datetime is null then 'unparseable tx_datetime'
                when tx_datetime < $min_time then 'tx_datetime before FRAUD_MIN_TX_TIME'
                when tx_datetime > $max_time then 'tx_datetime after now + FRAUD_MAX_TX_AHEAD_S'
                when tx_amount_raw is null then 'null tx_amount'
                when tx_amount is null or isnan(tx_amount) or isinf(tx_amount) then 'non-numeric tx_amount'
                when tx_amount < 0 then 'negative tx_amount'
                when tx_amount > $max_amount then 'tx_amount above FRAUD_MAX_AMOUNT'
                when tx_fraud_raw is not null and (fraud_num is null or fraud_num not in (0, 1))
                    then 'tx_fraud not 0/1'
                when label_time_raw is not null and label_time is null then 'unparseable label_time'
                when label_time < tx_datetime then 'label_time before tx_datetime'
                when k.conflict_id is not null then 'conflicting duplicate transaction_id'
                when dup_rank > 1 then 'duplicate transaction_id'
                when tx_datetime < $start or tx_datetime >= $end then '{OUTSIDE}'
            end as reason,
            cast(fraud_num as integer) as tx_fraud,
            -- Labels without a label_time are assumed known after the configured delay.
            coalesce(label_time, case when fraud_num is not null
                then tx_datetime + to_seconds(cast($delay_s as bigint)) end) as label_known_at
    from counted as c
    left join conflicting as k on k.conflict_id = c.transaction_id
)
select * exclude (fraud_num) from judged
"""


@contextmanager
def _utc(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """TimeZone = UTC for the block (timestamptz casts read naive times in it), then the caller's setting."""
    (before,) = con.execute("select current_setting('TimeZone')").fetchone()
    con.execute("set TimeZone = 'UTC'")
    try:
        yield
    finally:
        con.execute("set TimeZone = ?", [before])


def _check(con: duckdb.DuckDBPyConnection, path: Path, start: datetime, end: datetime,
           label_delay_days: float) -> None:
    rel = _relation(con, path)
    cols = set(rel.columns)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"{path.name}: missing required column(s) {missing}; expected {list(REQUIRED)}")
    # The file's own columns, under fixed names; optional ones absent from the file are null.
    extra = [f"cast(null as varchar) as {c}" for c in OPTIONAL if c not in cols]
    view = rel.select(", ".join([*(f'"{c}"' for c in (*REQUIRED, *OPTIONAL) if c in cols), *extra]))
    view.create_view("ingest_source", replace=True)
    lim = limits()
    con.execute(CHECKED, {
        "max_id_len": MAX_ID_LEN, "forbidden": FORBIDDEN_ID_CHARS, "blank": _BLANK,
        "min_time": lim.min_time, "max_time": lim.max_time(), "max_amount": lim.max_amount,
        "start": start, "end": end, "delay_s": label_delay_days * 86400,
    })


_QUARANTINE_COLS = ("reason, transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud, "
                    "label_time, source, partition_start")
_QUARANTINE_ROWS = ("reason, transaction_id, tx_datetime_raw, customer_id, terminal_id, tx_amount_raw, "
                    "tx_fraud_raw, label_time_raw, $src, date_trunc('day', tx_datetime)")


def land(
    con: duckdb.DuckDBPyConnection,
    source_path: Path | str,
    start: str | datetime,
    end: str | datetime,
    label_delay_days: float = 7.0,
) -> IngestStats:
    """Replace partition slice [start, end) of raw.transactions from ``source_path``; idempotent."""
    path = Path(source_path)
    lo, hi = (datetime.fromisoformat(t) if isinstance(t, str) else t for t in (start, end))
    src = str(path)
    con.execute(DDL)
    with _utc(con):
        _check(con, path, lo, hi, label_delay_days)
    rng = {"start": lo, "end": hi}
    con.execute("begin")
    try:
        con.execute("delete from raw.transactions where tx_datetime >= $start and tx_datetime < $end", rng)
        # A transaction_id landed by another slice or source is a duplicate, not an update.
        con.execute(
            "update checked set reason = $reason where reason is null "
            "and transaction_id in (select transaction_id from raw.transactions)",
            {"reason": ALREADY_LANDED},
        )
        # The source's records are replaced, except 'already landed' ones of other slices (those rows'
        # ids are landed, so they would not be re-recorded as pending).
        con.execute(
            "delete from raw.quarantine where source = $src and (reason <> $already "
            "or (partition_start >= $start and partition_start < $end))",
            {"src": src, "already": ALREADY_LANDED, **rng},
        )
        (landed,) = con.execute(
            """insert into raw.transactions (transaction_id, tx_datetime, customer_id, terminal_id, tx_amount,
                                             tx_fraud, label_time, tx_fraud_scenario, source)
               select transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud,
                      label_known_at, tx_fraud_scenario, $src
               from checked where reason is null""",
            {"src": src},
        ).fetchone()
        # Rows outside the range are recorded while pending: not once their id is landed (by its own run).
        con.execute(
            f"""insert into raw.quarantine ({_QUARANTINE_COLS})
                select {_QUARANTINE_ROWS} from checked
                where reason is not null and not (reason = $outside
                    and transaction_id in (select transaction_id from raw.transactions))""",
            {"src": src, "outside": OUTSIDE},
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    rows_in, quarantined, (rows, frauds) = _counts(con, rng)
    recorded = dict(con.execute(
        "select reason, count(*) from raw.quarantine where source = ? group by reason order by reason", [src]
    ).fetchall())
    total = int(landed) + sum(quarantined.values())
    if total != rows_in:  # not an assert: it must hold under python -O too
        raise RuntimeError(f"ingest accounting broken: {rows_in} rows in, {landed} landed + "
                           f"{sum(quarantined.values())} quarantined")
    return IngestStats(rows=rows, frauds=frauds, quarantined=quarantined, rows_in=rows_in,
                       landed=int(landed), recorded={k: int(v) for k, v in recorded.items()})


def _counts(con: duckdb.DuckDBPyConnection, rng: dict) -> tuple[int, dict[str, int], tuple[int, int]]:
    per_reason = con.execute("select reason, count(*) from checked group by reason").fetchall()
    rows_in = sum(int(n) for _, n in per_reason)
    quarantined = {r: int(n) for r, n in per_reason if r is not None}
    rows, frauds = con.execute(
        "select count(*), coalesce(sum(tx_fraud), 0) from raw.transactions "
        "where tx_datetime >= $start and tx_datetime < $end", rng,
    ).fetchone()
    return rows_in, quarantined, (int(rows), int(frauds))
