"""The token economy: balances, compute history, estimates and admin grants."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, status

from app.deps import AdminUser, CurrentUser, DbSession, RatesDep, SettingsDep
from app.schemas.common import Page
from app.schemas.tokens import BalanceOut, CostBreakdownOut, EstimateOut, GrantIn, HistoryEntryOut
from compute.accounts.service import admin_grant, resolve_user_for
from compute.billing.service import estimate_for
from ledger.flows import BalanceSummary, balance_summary, history
from ledger.pricing import tokens, tokens_to_micro

router = APIRouter(prefix="/tokens", tags=["tokens"])

# Far beyond any real history, far below what a database integer holds: a huge offset is
# refused as bad input (422) instead of overflowing in the query.
MAX_HISTORY_OFFSET = 10**9
MAX_HISTORY_LIMIT = 500


def balance_out(user_id: int, summary: BalanceSummary) -> BalanceOut:
    return BalanceOut(
        user_id=user_id,
        available=tokens(summary.available),
        held=tokens(summary.held),
        earned=tokens(summary.earned),
        spent=tokens(summary.spent),
        pending=tokens(summary.pending),
    )


@router.get("/balance/{user_id}", response_model=BalanceOut)
def balance(user_id: str, viewer: CurrentUser, session: DbSession) -> BalanceOut:
    """`available` in the wallet, `held` in escrow for unfinished jobs, `earned` by your
    nodes (released to you), `pending`: earned by your nodes for saved work but not yet
    released (the platform's fee comes off on release), `spent` on jobs. `user_id` may be
    `me`."""
    user = resolve_user_for(session, viewer, user_id)
    return balance_out(user.id, balance_summary(session, user.id))


@router.get("/history/{user_id}", response_model=Page[HistoryEntryOut])
def compute_history(
    user_id: str,
    viewer: CurrentUser,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_HISTORY_OFFSET)] = 0,
    account: Annotated[Literal["all", "wallet"], Query()] = "all",
) -> Page[HistoryEntryOut]:
    """Ledger entries on your wallet and your jobs' escrows, newest first: grants, holds,
    charges per node, refunds, and credits earned by your nodes. `account=wallet`: the
    wallet's view, one row per movement in or out of it (grants, holds, refunds, earnings)."""
    user = resolve_user_for(session, viewer, user_id)
    lines, total = history(
        session, user.id, limit=limit, offset=offset, wallet_only=account == "wallet"
    )
    items = [
        HistoryEntryOut(**{**line.__dict__, "amount": tokens(line.amount)})  # type: ignore[arg-type]
        for line in lines
    ]
    return Page[HistoryEntryOut](items=items, total=total, limit=limit, offset=offset)


@router.post("/estimate", response_model=EstimateOut)
def estimate(
    _viewer: CurrentUser,
    settings: SettingsDep,
    rates: RatesDep,
    body: Annotated[dict[str, Any], Body()],
) -> EstimateOut:
    """The most a job can cost (its hold): `{requirements, max_runtime_s, max_tokens?}` or a
    whole job spec."""
    result = estimate_for(body, default_runtime_s=settings.default_max_runtime_s, rates=rates)
    return EstimateOut(
        total=tokens(result.total),
        breakdown=CostBreakdownOut(
            gpu=tokens(result.breakdown.gpu),
            cpu=tokens(result.breakdown.cpu),
            memory=tokens(result.breakdown.memory),
        ),
        max_runtime_s=result.runtime_s,
        capped_by_max_tokens=result.total < result.breakdown.total,
    )


@router.post("/grant", response_model=BalanceOut, status_code=status.HTTP_201_CREATED)
def grant(
    body: GrantIn,
    admin: AdminUser,
    session: DbSession,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> BalanceOut:
    """Issue tokens to a user (admins only: with the signup grant, the only way tokens come
    into being). Retrying with the same `Idempotency-Key` and body grants once; the same key
    with another body is refused (422 `idempotency_key_reused`). Returns the balance."""
    user = admin_grant(
        session,
        admin,
        user_id=body.user_id,
        amount=tokens_to_micro(body.amount),
        memo=body.memo,
        idempotency_key=idempotency_key,
    )
    return balance_out(user.id, balance_summary(session, user.id))
