"""Stream event schemas and their JSON form (one JSON object per Kafka message value).

Transactions and labels come in; scores, drift events and dead letters go out. Incoming events are
validated here: a malformed one raises ``EventError`` with a reason and the worker dead-letters it.
Datetimes are naive UTC on the inside and ISO-8601 in JSON (an offset on input is converted to UTC).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TOPIC_TRANSACTIONS = "transactions"
TOPIC_LABELS = "labels"
TOPIC_SCORES = "scores"
TOPIC_DEAD_LETTER = "dead-letter"
TOPIC_DRIFT = "drift"


class EventError(ValueError):
    """An incoming event that cannot be processed; ``reason`` goes to the dead-letter topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_chars(value: str) -> bool:
    return _CONTROL.search(value) is not None


def _utc_naive(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TransactionEvent(_Event):
    transaction_id: str = Field(min_length=1)
    tx_datetime: datetime
    customer_id: str = Field(min_length=1)
    terminal_id: str = Field(min_length=1)
    tx_amount: float = Field(ge=0)

    @field_validator("transaction_id", "customer_id", "terminal_id", mode="before")
    @classmethod
    def _ids_as_str(cls, v: Any) -> Any:
        # The contract allows string or integer ids; bools are not ids.
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("transaction_id", "customer_id", "terminal_id")
    @classmethod
    def _printable(cls, v: str) -> str:
        if has_control_chars(v):  # the stores use control characters as separators
            raise ValueError("ids must not contain control characters")
        return v

    @field_validator("tx_datetime")
    @classmethod
    def _naive(cls, v: datetime) -> datetime:
        return _utc_naive(v)

    @field_validator("tx_amount")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("tx_amount must be finite")
        return v


class LabelEvent(_Event):
    transaction_id: str = Field(min_length=1)
    tx_fraud: int = Field(ge=0, le=1)
    label_time: datetime

    @field_validator("transaction_id", mode="before")
    @classmethod
    def _id_as_str(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("label_time")
    @classmethod
    def _naive(cls, v: datetime) -> datetime:
        return _utc_naive(v)


class ScoreEvent(_Event):
    transaction_id: str
    tx_datetime: datetime
    river_score: float
    xgb_score: float | None = None
    xgb_alert: bool | None = None
    scored_at: float  # wall-clock epoch seconds when the worker emitted the score


class DriftEvent(_Event):
    time: datetime  # event time of the observation that triggered the detector
    detector: str
    stream: str
    details: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(_Event):
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    reason: str
    payload: str  # the original value, decoded leniently


def _loads(value: bytes | str | dict) -> dict:
    if isinstance(value, dict):
        return value
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise EventError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise EventError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "event"
    return f"{where}: {err['msg']}"


def _parse(model: type[_Event], what: str, value: bytes | str | dict) -> Any:
    if not isinstance(value, dict):
        try:  # fast path: pydantic parses and validates the JSON in one pass (2x json.loads + validate)
            return model.model_validate_json(value)
        except ValidationError:
            pass  # redo it the slow way for a precise reason
    try:
        return model.model_validate(_loads(value))
    except ValidationError as e:
        raise EventError(f"invalid {what}: {_first_error(e)}") from None


def parse_transaction(value: bytes | str | dict) -> TransactionEvent:
    return _parse(TransactionEvent, "transaction", value)


def parse_label(value: bytes | str | dict) -> LabelEvent:
    return _parse(LabelEvent, "label", value)


def dumps(event: BaseModel) -> bytes:
    return event.model_dump_json().encode()


def decode_leniently(value: bytes | str | dict | None) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
