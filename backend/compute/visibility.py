"""Object-level visibility shared by nodes and jobs: owners see theirs, admins see all."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from auth.models import Role, User

Owned = TypeVar("Owned")


def visible_to(model: type[Owned], viewer: User) -> Select[tuple[Owned]]:
    """A select of the rows of ``model`` (which has ``owner_id``) the viewer may see."""
    query = select(model)
    if viewer.role != Role.ADMIN:
        query = query.where(model.owner_id == viewer.id)  # type: ignore[attr-defined]
    return query


def page(
    session: Session, query: Select[tuple[Owned]], *, order_by: Any, limit: int, offset: int
) -> tuple[list[Owned], int]:
    """One page of a query, with the total number of rows it matches."""
    # Count the matching rows alone: a subquery of whole rows would read every job's spec.
    counted = query.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    total = session.scalar(counted) or 0
    rows = session.scalars(query.order_by(order_by).limit(limit).offset(offset)).all()
    return list(rows), total


def owned_or_missing(obj: Owned | None, viewer: User) -> Owned | None:
    """The object if the viewer may see it; None (reported as not found) otherwise."""
    if obj is None or (viewer.role != Role.ADMIN and obj.owner_id != viewer.id):  # type: ignore[attr-defined]
        return None
    return obj
