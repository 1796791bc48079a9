"""Request and response models of the scoring API (the transaction contract, validated by Pydantic).

The fields are ``ml.contract``'s types, the bounds every entry shares: ids of 1-64 printable characters,
finite amounts in [0, FRAUD_MAX_AMOUNT], ISO-8601 times (an offset converted to UTC, a naive time taken as
UTC; no bare numbers) from FRAUD_MIN_TX_TIME to now + FRAUD_MAX_TX_AHEAD_S. Invalid input is rejected before
any work with HTTP 400 and Pydantic's per-field reasons (``loc`` and ``msg``, never the value).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ml.contract import (
    EXAMPLE_TRANSACTION,
    MAX_ID_LEN,
    ContractError,
    Transaction,
    check_identifier,
    limits,
)
from ml.features.per_transaction import EPOCH, ONE_US, WINDOW_ENTITIES, TxEvent
from ml.features.vectorised import TxColumns

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENTITY_FIELDS = tuple(WINDOW_ENTITIES)
MAX_BATCH = 10_000  # transactions per /score_batch or /score_columns request (larger requests get HTTP 400)

def as_event(tx: Transaction) -> TxEvent:
    """The normalised event the online features take (``per_transaction.tx_event``, without a dict)."""
    t = tx.tx_datetime  # naive UTC (ml.contract.Timestamp)
    return TxEvent(tx.transaction_id, (t - EPOCH) // ONE_US, {e: getattr(tx, e) for e in _ENTITY_FIELDS},
                   tx.tx_amount, t)


def _identifiers(values: list[Any]) -> list[str]:
    """A column of identifiers as strings, each checked as ``Transaction`` checks one (the first bad one
    named by its position). The usual column (ASCII, short, no controls) is checked on the joined string
    and the lengths in C; only a column that fails that, or has non-ASCII text, is checked item by item."""
    out = [v if type(v) is str else str(v) for v in values]
    joined = "".join(out)
    if (joined.isascii() and not _CONTROL.search(joined) and max(map(len, out)) <= MAX_ID_LEN
            and all(v.strip() for v in out)):
        return out
    for k, v in enumerate(values):
        try:
            check_identifier(v)
        except ContractError as exc:
            raise ValueError(f"item {k}: {exc}") from None
    return out


class _Times(list):
    """The checked time column, with its values in µs (UTC) computed once by the check."""

    t_us: np.ndarray


def _times(values: list[datetime]) -> _Times:
    """A time column to naive UTC and checked against the contract's range in bulk (numpy on the µs)."""
    if any(t.tzinfo is not None for t in values):
        conv = []
        for k, t in enumerate(values):
            try:
                conv.append(t if t.tzinfo is None else t.astimezone(UTC).replace(tzinfo=None))
            except OverflowError:
                raise ValueError(f"item {k}: out of range once converted to UTC") from None
        values = conv
    lim = limits()
    # pandas converts datetimes in C, several times faster than numpy's datetime64 or Python arithmetic.
    t_us = pd.DatetimeIndex(values).as_unit("us").asi8
    low, high = ((t - EPOCH) // ONE_US for t in (lim.min_time, lim.max_time()))
    bad = (t_us < low) | (t_us > high)
    if bad.any():
        k = int(np.argmax(bad))
        why = (f"before {lim.min_time:%Y-%m-%d} (FRAUD_MIN_TX_TIME)" if t_us[k] < low
               else "more than FRAUD_MAX_TX_AHEAD_S in the future")
        raise ValueError(f"item {k}: {why}")
    out = _Times(values)
    out.t_us = t_us
    return out


def _amounts(values: list[float]) -> list[float]:
    a = np.asarray(values, np.float64)
    cap = limits().max_amount
    if a.max() > cap:  # finite and >= 0 are the item type's checks (pydantic-core, in C)
        raise ValueError(f"item {int(np.argmax(a > cap))}: must be <= {cap:g} (FRAUD_MAX_AMOUNT)")
    return values


Column = Field(min_length=1, max_length=MAX_BATCH)
_ColumnId = Annotated[StrictStr | StrictInt, WithJsonSchema({"anyOf": [
    {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}, {"type": "integer"}]})]
# Column items are checked by pydantic-core in C and the columns in bulk by the validators below: a
# Python validator per item would cost more than the scoring of a bulk request.
_ColumnTime = Annotated[datetime, Strict()]  # strict: ISO-8601 strings only, no bare numbers
_ColumnAmount = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]


class TransactionColumns(BaseModel):
    """Many transactions as columns (``POST /score_columns``): one list per contract field, all of one
    length, at most ``MAX_BATCH``. Bulk scoring's format: a column parses and validates in one pass of
    pydantic-core, where a list of objects costs a model per transaction."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example":
        {k: [v, v] if k != "transaction_id" else [v, "tx-000184212"] for k, v in EXAMPLE_TRANSACTION.items()}})

    transaction_id: Annotated[list[_ColumnId], Column]
    tx_datetime: Annotated[list[_ColumnTime], Column]
    customer_id: Annotated[list[_ColumnId], Column]
    terminal_id: Annotated[list[_ColumnId], Column]
    tx_amount: Annotated[list[_ColumnAmount], Column]

    @field_validator("transaction_id", "customer_id", "terminal_id")
    @classmethod
    def _identifiers(cls, v: list[Any]) -> list[str]:
        return _identifiers(v)

    @field_validator("tx_datetime")
    @classmethod
    def _times(cls, v: list[datetime]) -> list[datetime]:
        return _times(v)

    @field_validator("tx_amount")
    @classmethod
    def _amounts(cls, v: list[float]) -> list[float]:
        return _amounts(v)

    @model_validator(mode="after")
    def _one_length(self) -> TransactionColumns:
        lengths = {f: len(getattr(self, f)) for f in type(self).model_fields}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns differ in length: {lengths}")
        return self

    def as_columns(self) -> TxColumns:
        """The columns the online features take (``TxEvent`` fields as arrays; times in µs, UTC)."""
        times = self.tx_datetime
        t_us = times.t_us if isinstance(times, _Times) else _times(times).t_us
        entities = {e: getattr(self, e) for e in _ENTITY_FIELDS}
        return TxColumns(self.transaction_id, t_us, np.array(self.tx_amount, np.float64), entities)


class ErrorDetail(BaseModel):
    """One rejected field: where (``loc``: the field, then the item's position in a list) and why."""

    type: str = Field(examples=["value_error"])
    loc: list[str | int] = Field(examples=[["tx_amount"]])
    msg: str = Field(examples=["Value error, must be <= 1e+06 (FRAUD_MAX_AMOUNT)"])
    url: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer: what went wrong and, for invalid input, the fields and reasons."""

    error: str = Field(examples=["1 validation error for Input"])
    detail: list[ErrorDetail] | str | None = Field(None, description="Per-field reasons (400) or the cause.")
    request_id: str | None = Field(None, description="The request's id (also the X-Request-ID header).")


class Reason(BaseModel):
    feature: str = Field(examples=["terminal_risk_30d"])
    value: float = Field(examples=[0.42])
    contribution: float = Field(description="XGBoost contribution to the log-odds (pred_contribs).",
                                examples=[1.87])


class ScoreResult(BaseModel):
    transaction_id: str = Field(examples=["tx-000184211"])
    fraud_probability: float = Field(ge=0, le=1, examples=[0.083])
    decision: str = Field(description="'decline' when fraud_probability >= threshold, else 'approve'.",
                          examples=["approve"], json_schema_extra={"enum": ["approve", "decline"]})
    threshold: float = Field(examples=[0.5])
    model_tag: str = Field(examples=["fraud-champion:3fkqmzr2mklpbhzr"])
    reasons: list[Reason] = Field(description="Features pushing the score up most, largest first (empty "
                                  "when not asked for).")
    online_model_probability: float | None = Field(
        None, description="The streaming (River) model's opinion, when a checkpoint is available; else null.",
        examples=[0.12])
    degraded: bool = Field(False, description="True when scored without the online store (fail-open).")


class BatchResult(BaseModel):
    results: list[ScoreResult]


class ColumnsResult(BaseModel):
    """``POST /score_columns``' answer, as columns in the request's order (no reasons: bulk scoring)."""

    transaction_id: list[str] = Field(examples=[["tx-000184211", "tx-000184212"]])
    fraud_probability: list[float] = Field(examples=[[0.083, 0.911]])
    decision: list[str] = Field(description="'decline' when fraud_probability >= threshold, else 'approve'.",
                                examples=[["approve", "decline"]])
    threshold: float = Field(examples=[0.5])
    model_tag: str = Field(examples=["fraud-champion:3fkqmzr2mklpbhzr"])
    online_model_probability: list[float | None] | None = Field(
        None, description="The streaming (River) model's opinions, when a checkpoint exists; else null.",
        examples=[[0.12, 0.67]])
    degraded: bool = Field(False, description="True when scored without the online store (fail-open).")


class ReloadResult(BaseModel):
    """``POST /reload``'s answer: what this worker serves now."""

    reloaded: bool = Field(description="Whether a newer champion was loaded.")
    model_tag: str | None = Field(examples=["fraud-champion:3fkqmzr2mklpbhzr"],
                                  description="The champion served (null when none could be loaded).")
    error: str | None = Field(None, description="Why the latest champion could not be loaded.")
