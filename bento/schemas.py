"""Request and response models of the scoring API (the transaction contract, validated by Pydantic).

Invalid input is rejected before any work with HTTP 400 and Pydantic's per-field reasons: missing fields,
wrong types (a string amount, an object id), negative or non-finite amounts, unparseable times, empty ids or
ids with control characters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from ml.features.online import EPOCH, ONE_US, WINDOW_ENTITIES, TxEvent

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENTITY_FIELDS = tuple(WINDOW_ENTITIES)
MAX_BATCH = 10_000  # transactions per /score_batch request (larger requests get HTTP 400)

Identifier = Annotated[StrictStr | StrictInt, Field(description="String or integer identifier.")]


class Transaction(BaseModel):
    """One card payment, as in the transaction contract. Extra fields (e.g. ``tx_fraud``) are ignored."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: Identifier
    tx_datetime: datetime = Field(description="Transaction time; naive times are UTC.")
    customer_id: Identifier
    terminal_id: Identifier
    tx_amount: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False, description="Amount, >= 0.")]

    @field_validator("transaction_id", "customer_id", "terminal_id")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("must not be empty")
            if _CONTROL.search(v):  # the online store uses them as separators
                raise ValueError("must not contain control characters")
        return v

    def as_event(self) -> TxEvent:
        """The normalised event the online features take (``ml.features.online.tx_event``, without a dict)."""
        t = self.tx_datetime
        if t.tzinfo is not None:
            t = t.astimezone(UTC).replace(tzinfo=None)
        entities = {e: str(getattr(self, e)) for e in _ENTITY_FIELDS}
        return TxEvent(str(self.transaction_id), (t - EPOCH) // ONE_US, entities, float(self.tx_amount), t)


class Reason(BaseModel):
    feature: str
    value: float
    contribution: float = Field(description="XGBoost contribution to the log-odds (pred_contribs).")


class ScoreResult(BaseModel):
    transaction_id: str
    fraud_probability: float
    decision: str = Field(description="'decline' when fraud_probability >= threshold, else 'approve'.")
    threshold: float
    model_tag: str
    reasons: list[Reason] = Field(description="Features pushing the score up most, largest first.")
    online_model_probability: float | None = Field(
        None, description="The streaming (River) model's opinion, when a checkpoint is available.")
    degraded: bool = Field(False, description="True when scored without the online store (fail-open).")


class BatchResult(BaseModel):
    results: list[ScoreResult]
