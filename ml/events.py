"""Stream event schemas and their JSON form (one JSON object per Kafka message value).

Transactions and labels come in; scores, drift events and dead letters go out. Incoming events are
validated here against the shared contract (``ml.contract``: ids, amounts, timestamps, labels), for Kafka
and replay alike: a malformed one raises ``EventError`` with a reason and the worker dead-letters it.
Datetimes are naive UTC on the inside and ISO-8601 in JSON (an offset on input is converted to UTC).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ml.contract import Label, Transaction

TOPIC_TRANSACTIONS = "transactions"
TOPIC_LABELS = "labels"
TOPIC_SCORES = "scores"
TOPIC_DEAD_LETTER = "dead-letter"
TOPIC_DRIFT = "drift"

# A dead letter keeps this much of the original value (a Kafka message can be 1 MB; the dead-letter topic
# must accept whatever came in) and this much of the reason.
MAX_DEAD_PAYLOAD = 4096
MAX_REASON = 500


class EventError(ValueError):
    """An incoming event that cannot be processed; ``reason`` goes to the dead-letter topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# The incoming events are the contract's records (``ml.contract``), the service's request models too.
TransactionEvent = Transaction
LabelEvent = Label


def drift_event_id(detector: str, stream: str, time: datetime, seq: Any = None) -> str:
    """A drift event's id, the same every time the event is produced again (outputs are at least once)."""
    key = f"{detector}\x1f{stream}\x1f{time.isoformat()}\x1f{'' if seq is None else seq}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class DriftEvent(_Event):
    time: datetime  # event time of the observation that triggered the detector
    detector: str
    stream: str
    details: dict[str, Any] = Field(default_factory=dict)
    # Consumers count distinct ids: a replay after a crash produces the same event (and id) again.
    id: str = ""

    @model_validator(mode="after")
    def _with_id(self) -> DriftEvent:
        if not self.id:
            seq = self.details.get("labels_learned")  # tells apart two detections at one label_time
            object.__setattr__(self, "id", drift_event_id(self.detector, self.stream, self.time, seq))
        return self


class DeadLetter(_Event):
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    reason: str
    payload: str  # the original value, decoded leniently, cut to MAX_DEAD_PAYLOAD characters
    payload_size: int = 0  # the original value's length (bytes as received, or characters)
    truncated: bool = False

    @classmethod
    def of(cls, topic: str, partition: int | None, offset: int | None, value: Any, reason: str) -> DeadLetter:
        text, size, cut = decode_leniently(value)
        return cls(source_topic=topic, partition=partition, offset=offset, reason=reason[:MAX_REASON],
                   payload=text, payload_size=size, truncated=cut)


def _loads(value: bytes | str | dict) -> dict:
    if isinstance(value, dict):
        return value
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise EventError(f"not JSON: {e}") from None
    except RecursionError:
        raise EventError("not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise EventError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "event"
    return f"{where}: {err['msg']}"


def _parse(model: type[BaseModel], what: str, value: bytes | str | dict | None) -> Any:
    if value is None or isinstance(value, bool | int | float | list):  # a tombstone, a decoded non-object
        raise EventError(f"expected a JSON object, got {type(value).__name__}")
    if not isinstance(value, dict):
        try:  # fast path: pydantic parses and validates the JSON in one pass (2x json.loads + validate)
            return model.model_validate_json(value)
        except ValidationError:
            pass  # redo it the slow way for a precise reason
    try:
        return model.model_validate(_loads(value))
    except ValidationError as e:
        raise EventError(f"invalid {what}: {_first_error(e)}") from None


def parse_transaction(value: bytes | str | dict | None) -> TransactionEvent:
    return _parse(TransactionEvent, "transaction", value)


def parse_label(value: bytes | str | dict | None) -> LabelEvent:
    return _parse(LabelEvent, "label", value)


def decode_leniently(value: bytes | str | dict | None, limit: int = MAX_DEAD_PAYLOAD
                     ) -> tuple[str, int, bool]:
    """The first ``limit`` characters of a value as text (invalid UTF-8 replaced), its full length (bytes
    as received, else characters) and whether the text was cut."""
    if value is None:
        return "", 0, False
    if isinstance(value, dict):
        try:
            value = json.dumps(value, default=str)
        except (ValueError, RecursionError):  # e.g. a circular structure: its repr says enough
            value = repr(value)
    if isinstance(value, bytes | bytearray):
        # Cut before decoding (4 bytes a character at most), so a huge value is not decoded whole.
        text = bytes(value[: 4 * limit]).decode("utf-8", errors="replace")
        return text[:limit], len(value), len(text) > limit or len(value) > 4 * limit
    text = str(value)
    return text[:limit], len(text), len(text) > limit
