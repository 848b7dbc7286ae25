"""What a page of nodes shows beside each node's own row: its owner's name and what its
owner has earned with it, read for the whole page in two queries."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth.models import User
from ledger.models import EntryKind, LedgerEntry


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
