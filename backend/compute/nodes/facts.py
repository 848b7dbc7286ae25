"""What a page of nodes shows beside each node's own row: its owner's name, what its owner
has earned with it, what waits as its pending credit and what was voided, read for the whole
page in four queries."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth.models import User
from ledger.models import AccountKind, EntryKind, LedgerAccount, LedgerEntry


def owner_names(session: Session, owner_ids: Collection[int]) -> dict[int, str]:
    if not owner_ids:
        return {}
    rows = session.execute(select(User.id, User.username).where(User.id.in_(set(owner_ids))))
    return dict(rows.all())


def node_earnings(session: Session, node_ids: Collection[int]) -> dict[int, int]:
    """Micro-tokens credited to each node's owner for its work (after the platform's fee)."""
    if not node_ids:
        return {}
    rows = session.execute(
        select(LedgerEntry.node_id, func.sum(LedgerEntry.amount))
        .where(
            LedgerEntry.node_id.in_(set(node_ids)),
            LedgerEntry.kind == EntryKind.NODE_CREDIT.value,
        )
        .group_by(LedgerEntry.node_id)
    )
    return {node: int(total or 0) for node, total in rows.all()}


def node_pending(session: Session, node_ids: Collection[int]) -> dict[int, int]:
    """Micro-tokens each node has earned for saved work, not yet released to its owner."""
    if not node_ids:
        return {}
    rows = session.execute(
        select(LedgerAccount.node_id, func.sum(LedgerAccount.balance))
        .where(
            LedgerAccount.kind == AccountKind.PENDING.value,
            LedgerAccount.node_id.in_(set(node_ids)),
        )
        .group_by(LedgerAccount.node_id)
    )
    return {node: int(total or 0) for node, total in rows.all()}


def node_voided(session: Session, node_ids: Collection[int]) -> dict[int, int]:
    """Micro-tokens of each node's credit voided back to payers (its work refused)."""
    if not node_ids:
        return {}
    rows = session.execute(
        select(LedgerEntry.node_id, func.sum(LedgerEntry.amount))
        .where(
            LedgerEntry.node_id.in_(set(node_ids)),
            LedgerEntry.kind == EntryKind.VOID.value,
            LedgerEntry.amount > 0,  # the payer's side
        )
        .group_by(LedgerEntry.node_id)
    )
    return {node: int(total or 0) for node, total in rows.all()}
