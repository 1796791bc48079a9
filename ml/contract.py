"""The transaction contract's bounds, shared by every entry: the HTTP service, stream events and file ingest.

One definition of what a valid identifier, amount, timestamp and label is, so the three entries accept and
refuse the same values. Python callers use the ``check_*`` functions (or the Pydantic types built on them);
SQL and polars callers use the same limits and ``FORBIDDEN_ID_CHARS``, a pattern that RE2 (DuckDB) and Rust's
regex (polars) both understand.

Limits come from the settings (read once per process, ``limits.cache_clear()`` re-reads):
``FRAUD_MAX_AMOUNT`` (default 1,000,000), ``FRAUD_MIN_TX_TIME`` (default 2000-01-01, UTC) and
``FRAUD_MAX_TX_AHEAD_S`` (how far past now a timestamp may lie, default one day).
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from ml.settings import get_settings

MAX_ID_LEN = 64
# Unicode categories an identifier may not contain: controls (the online store's separators among them),
# format characters (invisible, e.g. U+200B), line and paragraph separators (U+2028/9) and surrogates.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
FORBIDDEN_ID_CHARS = r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]"
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ContractError(ValueError):
    """A value outside the contract; the message is the reason (it never repeats the value)."""


@dataclass(frozen=True)
class Limits:
    max_amount: float
    min_time: datetime  # naive UTC
    max_ahead: timedelta

    # [valid until (time.time()), the bound]: recomputed once a second, as a bound per item costs ~1 us
    _max_time: list = field(default_factory=lambda: [0.0, datetime.min], compare=False, repr=False)

    def max_time(self) -> datetime:
        now, cached = time.time(), self._max_time
        if now >= cached[0]:
            bound = datetime.now(UTC).replace(tzinfo=None) + self.max_ahead + timedelta(seconds=1)
            cached[:] = [now + 1, bound]
        return cached[1]


@lru_cache(maxsize=1)
def limits() -> Limits:
    s = get_settings()
    return Limits(max_amount=s.max_amount, min_time=s.min_tx_time, max_ahead=timedelta(seconds=s.max_tx_ahead_s))


def check_identifier(value: Any) -> str:
    """A string or integer id as a string of 1..64 printable characters, not all whitespace."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ContractError("must be a string or an integer")
    if isinstance(value, int):
        if not -(10**MAX_ID_LEN) < value < 10**MAX_ID_LEN:
            raise ContractError(f"longer than {MAX_ID_LEN} characters")
        return str(value)
    if len(value) > MAX_ID_LEN:
        raise ContractError(f"longer than {MAX_ID_LEN} characters")
    if not value.strip():
        raise ContractError("must not be empty or whitespace")
    if value.isascii():
        if _ASCII_CONTROL.search(value):
            raise ContractError("must not contain control characters")
    elif any(unicodedata.category(c) in FORBIDDEN_CATEGORIES for c in value):
        raise ContractError("must not contain control, format or separator characters")
    return value


def _identifier(value: str | int) -> str:
    """``check_identifier`` after pydantic-core checked the type: the usual id (short printable ASCII) in a
    few C calls."""
    if type(value) is str and len(value) <= MAX_ID_LEN and value.isascii() and value.isprintable() and (
            value and not value.isspace()):
        return value
    return check_identifier(value)


def check_amount(value: Any) -> float:
    """A finite amount in [0, FRAUD_MAX_AMOUNT]; numbers only (no strings, no booleans)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError("must be a number")
    try:
        x = float(value)
    except OverflowError:
        raise ContractError("must be finite") from None
    if not math.isfinite(x):
        raise ContractError("must be finite")
    if x < 0:
        raise ContractError("must be >= 0")
    cap = limits().max_amount
    if x > cap:
        raise ContractError(f"must be <= {cap:g} (FRAUD_MAX_AMOUNT)")
    return x


def to_utc_naive(value: datetime) -> datetime:
    """An aware time converted to UTC (naive), a naive one taken as UTC; ContractError if it cannot be."""
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise ContractError("out of range once converted to UTC") from None


def check_time_range(value: datetime) -> datetime:
    """A datetime -> naive UTC, within [FRAUD_MIN_TX_TIME, now + FRAUD_MAX_TX_AHEAD_S]."""
    t = to_utc_naive(value)
    lim = limits()
    if t < lim.min_time:
        raise ContractError(f"before {lim.min_time:%Y-%m-%d} (FRAUD_MIN_TX_TIME)")
    if t > lim.max_time():
        raise ContractError("more than FRAUD_MAX_TX_AHEAD_S in the future")
    return t


def check_label(value: Any) -> int:
    """A fraud label: exactly 0 or 1 (an integer, or a float equal to one of them)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise ContractError("must be 0 or 1")
    return int(value)


def _pydantic(check, when=BeforeValidator):
    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ContractError as exc:  # pydantic reports ValueError's text as the field's reason
            raise ValueError(str(exc)) from None

    return when(validate)


def _not_a_number(value: Any) -> Any:
    # pydantic-core reads a number, or a string of one, as seconds or milliseconds since the epoch.
    if isinstance(value, int | float) or (
            isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()):
        raise ContractError("must be an ISO-8601 string (numbers are ambiguous)")
    return value


_UTC_ISO = PlainSerializer(lambda t: t.isoformat(), return_type=str, when_used="json")

# The contract as Pydantic field types (the service's request models, the stream's event models), with the
# parsing and the numeric bounds left to pydantic-core (a 10,000-row request pays ~1 us a row for them, the
# Python checks ~3.5); the JSON schema says what they accept, so the OpenAPI document tells the truth.
EntityId = Annotated[
    StrictStr | StrictInt,
    _pydantic(_identifier, AfterValidator),
    WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN},
                              {"type": "integer"}],
                    "description": f"String or integer id: 1-{MAX_ID_LEN} printable characters."}),
]
Amount = Annotated[
    float,
    Strict(),  # no strings, no booleans
    Field(allow_inf_nan=False),
    _pydantic(check_amount, AfterValidator),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": limits().max_amount,
                    "description": "Finite amount, 0 <= amount <= FRAUD_MAX_AMOUNT (default 1,000,000)."}),
]
Timestamp = Annotated[
    datetime,
    _pydantic(_not_a_number),
    _pydantic(check_time_range, AfterValidator),
    _UTC_ISO,
    WithJsonSchema({"type": "string", "format": "date-time",
                    "description": "ISO-8601; an offset is converted to UTC, a naive time is UTC; "
                                   "from FRAUD_MIN_TX_TIME (2000-01-01) to now + 1 day."}),
]
FraudLabel = Annotated[
    int,
    _pydantic(check_label),
    WithJsonSchema({"type": "integer", "enum": [0, 1], "description": "0 genuine, 1 fraud."}),
]


EXAMPLE_TRANSACTION = {"transaction_id": "tx-000184211", "tx_datetime": "2024-05-14T09:26:31Z",
                       "customer_id": "c-4711", "terminal_id": "t-0815", "tx_amount": 57.35}


class Transaction(BaseModel):
    """One card payment as the contract defines it: the service's request and the stream's event alike.
    Extra fields (e.g. ``tx_fraud``) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra={"example": EXAMPLE_TRANSACTION})

    transaction_id: EntityId
    tx_datetime: Timestamp
    customer_id: EntityId
    terminal_id: EntityId
    tx_amount: Amount


class Label(BaseModel):
    """A transaction's label, known from ``label_time`` on."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    transaction_id: EntityId
    tx_fraud: FraudLabel
    label_time: Timestamp

