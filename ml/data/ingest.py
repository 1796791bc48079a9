"""Land transactions from a CSV/Parquet file into the warehouse, quarantining bad rows with a reason.

Every row of the source gets exactly one outcome per run: landed in ``raw.transactions`` or quarantined
with a reason, so ``rows_in == landed + quarantined`` (checked here, shown in the asset's metadata).
The file is read with polars (BOM, CRLF and quoted fields handled by its CSV reader; every CSV column read as
text so a bad value survives to be quarantined), and validation is a set of polars expressions over the whole
source (a duplicate ``transaction_id`` is caught even when its twin lies in another day) applying the shared
contract (``ml.contract``): ids of 1..MAX_ID_LEN printable characters, finite amounts in [0,
FRAUD_MAX_AMOUNT], timestamps in [FRAUD_MIN_TX_TIME, now + FRAUD_MAX_TX_AHEAD_S] (ISO-8601; an offset is
converted to UTC, a naive time is UTC), labels exactly 0 or 1.

Valid rows outside the run's partition range (a multi-day backfill is one run: its whole range) are
quarantined as ``outside_partitions``. ``raw.quarantine`` holds, per source, what is not landed: a re-run
replaces the source's records (idempotent), and an ``outside_partitions`` row is recorded only while its
``transaction_id`` is not landed (the run that covers its day lands it).

No value reaches SQL text: the checked rows reach DuckDB as registered Arrow data and bounds are parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

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


def _scan(path: Path) -> pl.LazyFrame:
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} not found")
    suffix = path.suffix.lower()
    # glob=False: the name is a name, never a pattern (a '[' or '*' in it must not match other files).
    if suffix == ".parquet":
        return pl.scan_parquet(path, glob=False)
    if suffix in (".csv", ".gz"):
        # All columns as text: bad values must survive reading so they can be quarantined with a reason.
        # An empty field, quoted or not, is missing (as DuckDB's reader has it).
        return pl.scan_csv(path, infer_schema=False, null_values="", glob=False)
    raise ValueError(f"unsupported source file {path.name} (use .csv or .parquet)")


# The simulator's and most exports' format, parsed natively; anything else goes through _ISO (slower).
_FAST_TIME = "%Y-%m-%d %H:%M:%S"
# ISO-8601 as DuckDB's timestamptz cast reads it: date, optional [T ]time with fraction, optional Z/UTC/offset.
_ISO = (r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
        r"\s*(?:Z|UTC|([+-])(\d{2})(?::?(\d{2}))?)?\s*$")


def _iso_to_utc(s: pl.Expr) -> pl.Expr:
    """ISO-8601 text -> naive UTC datetime (an offset subtracted); null where it is not a valid time."""
    g = s.str.extract_groups(_ISO)

    def part(i: int) -> pl.Expr:
        return g.struct.field(str(i))

    def num(i: int) -> pl.Expr:
        return part(i).cast(pl.Int64, strict=False).fill_null(0)

    date = pl.concat_str([part(1), part(2).str.zfill(2), part(3).str.zfill(2)], separator="-").str.to_date(
        "%Y-%m-%d", strict=False)
    hh, mm, ss, off_h, off_m = num(4), num(5), num(6), num(9), num(10)
    us = part(7).str.pad_end(6, "0").str.slice(0, 6).cast(pl.Int64, strict=False).fill_null(0)
    offset = pl.when(part(8) == "-").then(-1).otherwise(1) * (off_h * 60 + off_m)
    valid = (((hh < 24) | ((hh == 24) & (mm == 0) & (ss == 0) & (us == 0)))  # 24:00:00 is the next midnight
             & (mm < 60) & (ss < 60) & (off_h < 24) & (off_m < 60))
    t = date.cast(pl.Datetime("us")) + pl.duration(hours=hh, minutes=mm - offset, seconds=ss, microseconds=us)
    return pl.when(valid).then(t)


def _time(raw: str, dtype: pl.DataType) -> pl.Expr:
    """A time column as naive UTC microseconds; text gets the fast format here and _reparse the rest."""
    c = pl.col(raw)
    if isinstance(dtype, pl.Datetime) or dtype == pl.Date:  # naive UTC already (see _read)
        return c.cast(pl.Datetime("us"))
    # ':60' is not a time (the fast parser would roll it into the next minute).
    return pl.when(c.str.slice(17, 2) != "60").then(
        c.str.to_datetime(_FAST_TIME, strict=False, time_unit="us"))


def _number(raw: str, dtype: pl.DataType) -> pl.Expr:
    """A number column as Float64; text gets the plain spellings here and _reparse the rest."""
    c = pl.col(raw)
    if dtype == pl.String:
        c = c.str.strip_chars()  # as DuckDB's cast: surrounding spaces are allowed
    return c.cast(pl.Float64, strict=False)


def _grouped_number(s: pl.Expr) -> pl.Expr:
    """A number written with digit separators, which DuckDB's cast accepts: one '_' between two digits."""
    s = s.str.strip_chars()
    grouped = s.str.contains("_", literal=True) & ~s.str.contains(r"(^|[^0-9])_|_($|[^0-9])")
    return pl.when(grouped).then(s.str.replace_all("_", "", literal=True).cast(pl.Float64, strict=False))


def _scenario(number: pl.Expr) -> pl.Expr:
    return number.round(mode="half_away_from_zero").cast(pl.Int32, strict=False)  # as DuckDB's integer cast


# typed column <- its text column: the slower parse for the values the first pass left null.
_REPARSE = (
    ("tx_datetime", "tx_datetime_raw", _iso_to_utc),
    ("label_time", "label_time_raw", _iso_to_utc),
    ("tx_amount", "tx_amount_raw", _grouped_number),
    ("fraud_num", "tx_fraud_raw", _grouped_number),
    ("tx_fraud_scenario", "tx_fraud_scenario_raw", lambda s: _scenario(_grouped_number(s))),
)


def _reparse(df: pl.DataFrame) -> pl.DataFrame:
    """Parse the text values the fast first pass did not read (none in most files) with the full grammar, only
    where needed: the ISO regex costs seconds over millions of rows."""
    for typed, raw, parse in _REPARSE:
        if df.schema[raw] != pl.String:
            continue
        todo = (df[typed].is_null() & df[raw].is_not_null()).arg_true()
        if len(todo):
            parsed = df[raw].gather(todo).to_frame().select(parse(pl.col(raw))).to_series()
            df = df.with_columns(df[typed].scatter(todo, parsed))
    return df


def _read(path: Path) -> pl.DataFrame:
    """The source's columns under fixed names: ids as text, ``*_raw`` as read (text for a CSV), typed values."""
    lf = _scan(path)
    schema = lf.collect_schema()
    missing = [c for c in REQUIRED if c not in schema]
    if missing:
        raise ValueError(f"{path.name}: missing required column(s) {missing}; expected {list(REQUIRED)}")

    def raw(c: str) -> pl.Expr:
        if c not in schema:  # optional columns absent from the file are null
            return pl.lit(None, pl.String).alias(f"{c}_raw")
        dtype, col = schema[c], pl.col(c)
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            # Recorded (if quarantined) as its UTC time, whatever the reader's session time zone.
            return col.dt.convert_time_zone("UTC").dt.replace_time_zone(None).alias(f"{c}_raw")
        keep = dtype.is_numeric() or isinstance(dtype, pl.Datetime) or dtype == pl.Date
        return (col if keep else col.cast(pl.String)).alias(f"{c}_raw")

    raws = [raw(c) for c in ("tx_datetime", "tx_amount", "tx_fraud", "label_time", "tx_fraud_scenario")]
    lf = lf.select(*(pl.col(c).cast(pl.String) for c in ("transaction_id", "customer_id", "terminal_id")), *raws)
    types = lf.collect_schema()
    lf = lf.with_columns(
        _time("tx_datetime_raw", types["tx_datetime_raw"]).alias("tx_datetime"),
        _number("tx_amount_raw", types["tx_amount_raw"]).alias("tx_amount"),
        _number("tx_fraud_raw", types["tx_fraud_raw"]).alias("fraud_num"),
        _time("label_time_raw", types["label_time_raw"]).alias("label_time"),
        _scenario(_number("tx_fraud_scenario_raw", types["tx_fraud_scenario_raw"])).alias("tx_fraud_scenario"),
        (~pl.col("transaction_id").is_first_distinct()).alias("dup_later"),
    )
    return _reparse(lf.collect(engine="streaming").rechunk())


def _as_text(c: str) -> pl.Expr:
    """A raw column as the text recorded in raw.quarantine."""
    return pl.col(c).cast(pl.String)


def _conflicting(df: pl.DataFrame) -> pl.Series:
    """Ids whose copies differ in content: none can be trusted, every copy is quarantined."""
    twins = df.filter(pl.col("dup_later"))["transaction_id"].drop_nulls().unique()
    if twins.is_empty():
        return twins
    dups = df.filter(pl.col("transaction_id").is_in(twins.implode()))
    # A copy's content: its typed values, and its text where a value did not parse.
    content = pl.struct(
        "tx_datetime", "customer_id", "terminal_id", "tx_amount", "fraud_num", "label_time",
        _as_text("tx_fraud_scenario_raw"),
        *(pl.when(pl.col(t).is_null()).then(_as_text(r)).alias(r) for t, r in (
            ("tx_datetime", "tx_datetime_raw"), ("tx_amount", "tx_amount_raw"), ("fraud_num", "tx_fraud_raw"),
            ("label_time", "label_time_raw"))),
    )
    per_id = dups.group_by("transaction_id").agg(content.n_unique().alias("versions"))
    return per_id.filter(pl.col("versions") > 1)["transaction_id"]


def _id_checks(c: str) -> list[tuple[pl.Expr, str]]:
    # The same four checks for each id, in this order (the first failing one is the row's reason).
    col = pl.col(c)
    return [
        (col.is_null() | (col == ""), f"null {c}"),
        (col.str.len_chars() > MAX_ID_LEN, f"{c} too long"),
        (col.str.contains(FORBIDDEN_ID_CHARS), f"{c} has control or format characters"),
        (col.str.contains(_BLANK), f"blank {c}"),
    ]


def _check(path: Path, start: datetime, end: datetime, label_delay_days: float) -> pl.DataFrame:
    """Every source row with its ``reason`` (null: it lands) and the typed values to land."""
    df = _read(path)
    conflicting = _conflicting(df)
    lim = limits()
    t, amount, fraud = pl.col("tx_datetime"), pl.col("tx_amount"), pl.col("fraud_num")
    label = pl.col("label_time")
    checks = [
        *_id_checks("transaction_id"), *_id_checks("customer_id"), *_id_checks("terminal_id"),
        (pl.col("tx_datetime_raw").is_null(), "null tx_datetime"),
        (t.is_null(), "unparseable tx_datetime"),
        (t < lim.min_time, "tx_datetime before FRAUD_MIN_TX_TIME"),
        (t > lim.max_time(), "tx_datetime after now + FRAUD_MAX_TX_AHEAD_S"),
        (pl.col("tx_amount_raw").is_null(), "null tx_amount"),
        (amount.is_null() | ~amount.is_finite(), "non-numeric tx_amount"),
        (amount < 0, "negative tx_amount"),
        (amount > lim.max_amount, "tx_amount above FRAUD_MAX_AMOUNT"),
        (pl.col("tx_fraud_raw").is_not_null() & (fraud.is_null() | ~((fraud == 0) | (fraud == 1))),
         "tx_fraud not 0/1"),
        (pl.col("label_time_raw").is_not_null() & label.is_null(), "unparseable label_time"),
        (label < t, "label_time before tx_datetime"),
        (pl.col("transaction_id").is_in(conflicting.implode()), "conflicting duplicate transaction_id"),
        (pl.col("dup_later"), "duplicate transaction_id"),
        ((t < start) | (t >= end), OUTSIDE),
    ]
    (cond, why), *rest = checks
    chain = pl.when(cond).then(pl.lit(why))
    for cond, why in rest:  # the first check that fails is the row's reason
        chain = chain.when(cond).then(pl.lit(why))
    reason = chain.otherwise(pl.lit(None, pl.String))
    # Labels without a label_time are assumed known after the configured delay.
    delay = timedelta(seconds=round(label_delay_days * 86400))
    return df.with_columns(
        reason.alias("reason"),
        fraud.cast(pl.Int32, strict=False).alias("tx_fraud"),
        pl.coalesce(label, pl.when(fraud.is_not_null()).then(t + delay)).alias("label_known_at"),
    )


# The checked rows reach DuckDB as one registered frame (Arrow, no copy); these statements only name its columns.
_VIEW = "ingest_checked"
_INSERT_LANDED = f"""
insert into raw.transactions (transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud,
                              label_time, tx_fraud_scenario, source)
select transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud, label_known_at,
       tx_fraud_scenario, $src
from {_VIEW} where reason is null
"""
# Rows outside the range are recorded while pending: not once their id is landed (by its own run).
_INSERT_QUARANTINED = f"""
insert into raw.quarantine (reason, transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, tx_fraud,
                            label_time, source, partition_start)
select reason, transaction_id, cast(tx_datetime_raw as varchar), customer_id, terminal_id,
       cast(tx_amount_raw as varchar), cast(tx_fraud_raw as varchar), cast(label_time_raw as varchar), $src,
       date_trunc('day', tx_datetime)
from {_VIEW}
where reason is not null
  and not (reason = $outside and transaction_id in (select transaction_id from raw.transactions))
"""
_SELECT_ALREADY_LANDED = f"""
select transaction_id from {_VIEW}
where reason is null and transaction_id in (select transaction_id from raw.transactions)
"""


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
    checked = _check(path, lo, hi, label_delay_days)
    con.execute(DDL)
    rng = {"start": lo, "end": hi}
    con.execute("begin")
    try:
        con.execute("delete from raw.transactions where tx_datetime >= $start and tx_datetime < $end", rng)
        checked = _mark_already_landed(con, checked)
        # The source's records are replaced, except 'already landed' ones of other slices (those rows'
        # ids are landed, so they would not be re-recorded as pending).
        con.execute(
            "delete from raw.quarantine where source = $src and (reason <> $already "
            "or (partition_start >= $start and partition_start < $end))",
            {"src": src, "already": ALREADY_LANDED, **rng},
        )
        (landed,) = con.execute(_INSERT_LANDED, {"src": src}).fetchone()
        con.execute(_INSERT_QUARANTINED, {"src": src, "outside": OUTSIDE})
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    finally:
        con.unregister(_VIEW)
    rows_in = checked.height
    quarantined = {r: int(n) for r, n in checked.group_by("reason").len().drop_nulls("reason").iter_rows()}
    del checked
    rows, frauds = con.execute(
        "select count(*), coalesce(sum(tx_fraud), 0) from raw.transactions "
        "where tx_datetime >= $start and tx_datetime < $end", rng,
    ).fetchone()
    recorded = dict(con.execute(
        "select reason, count(*) from raw.quarantine where source = ? group by reason order by reason", [src]
    ).fetchall())
    total = int(landed) + sum(quarantined.values())
    if total != rows_in:  # not an assert: it must hold under python -O too
        raise RuntimeError(f"ingest accounting broken: {rows_in} rows in, {landed} landed + "
                           f"{sum(quarantined.values())} quarantined")
    return IngestStats(rows=int(rows), frauds=int(frauds), quarantined=quarantined, rows_in=rows_in,
                       landed=int(landed), recorded={k: int(v) for k, v in recorded.items()})


# What the statements read: the rest of the checked frame stays in polars.
_SQL_COLUMNS = ("reason", "transaction_id", "customer_id", "terminal_id", "tx_datetime", "tx_amount", "tx_fraud",
                "label_known_at", "tx_fraud_scenario", "tx_datetime_raw", "tx_amount_raw", "tx_fraud_raw",
                "label_time_raw")


def _register(con: duckdb.DuckDBPyConnection, checked: pl.DataFrame) -> None:
    # Arrow string views, as polars holds them: DuckDB reads them without converting every string.
    con.register(_VIEW, checked.select(_SQL_COLUMNS).to_arrow(compat_level=pl.CompatLevel.newest()))


def _mark_already_landed(con: duckdb.DuckDBPyConnection, checked: pl.DataFrame) -> pl.DataFrame:
    """A row whose transaction_id another slice or source landed is a duplicate, not an update; ``checked``,
    so marked, is left registered for the inserts."""
    _register(con, checked)
    landed = con.sql(_SELECT_ALREADY_LANDED).pl()
    if landed.is_empty():
        return checked
    again = pl.col("reason").is_null() & pl.col("transaction_id").is_in(landed["transaction_id"].implode())
    checked = checked.with_columns(pl.when(again).then(pl.lit(ALREADY_LANDED)).otherwise("reason").alias("reason"))
    con.unregister(_VIEW)
    _register(con, checked)
    return checked
