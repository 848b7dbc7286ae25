"""Bodies of /tokens: grants, balances, history and estimates."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

TokenAmount = Annotated[
    Decimal,
    Field(gt=0, le=1_000_000_000, decimal_places=6, description="tokens, up to 6 decimals"),
]


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=2**31 - 1)
    amount: TokenAmount
    memo: str = Field("", max_length=500)


class BalanceOut(BaseModel):
    user_id: int
    available: float
    held: float
    earned: float
    spent: float
    # earned by your nodes for saved work, not yet released to you (gross: the platform's
    # fee comes off on release; voided back to the payer if the work is refused)
    pending: float


class HistoryEntryOut(BaseModel):
    entry_id: int
    transaction_id: int
    created_at: dt.datetime
    transaction_kind: str
    kind: str
    account: str
    amount: float
    job_id: int | None
    node_id: int | None
    memo: str


class CostBreakdownOut(BaseModel):
    gpu: float
    cpu: float
    memory: float


class EstimateOut(BaseModel):
    total: float
    breakdown: CostBreakdownOut
    max_runtime_s: int
    capped_by_max_tokens: bool
