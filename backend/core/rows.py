"""A new row inserted in one statement, its object known to the session without a read.

The ORM's unit of work (``session.add`` then ``flush``) costs more CPU than the database's
own work on a single-row insert; on the hot paths (a submit) the row goes in as one Core
``INSERT … RETURNING id`` instead, and the object is attached as the row it now is."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import ColumnDefault, Insert, insert, inspect
from sqlalchemy.orm import Session, make_transient_to_detached


@dataclass(frozen=True)
class _InsertOf:
    """What inserting a row of one mapped class takes, worked out once per class."""

    statement: Insert
    columns: tuple[tuple[str, str, ColumnDefault | None], ...]  # (attribute, column, default)


@cache
def _insert_of(cls: type) -> _InsertOf:
    mapper = inspect(cls)
    table = mapper.local_table
    columns = tuple(
        (mapper.get_property_by_column(column).key, column.name, column.default)
        for column in table.columns
        if not column.primary_key
    )
    return _InsertOf(insert(table).returning(table.c.id), columns)


def insert_new(session: Session, obj: Any) -> None:
    """Insert ``obj`` (new, with an integer primary key ``id``), every column given: what
    the object holds, else the column's Python default, else NULL. The session then holds
    it as persistent and fully loaded, so reading any attribute needs no query."""
    plan = _insert_of(type(obj))
    held = inspect(obj).dict
    values: dict[str, Any] = {}
    row: dict[str, Any] = {}
    for key, name, default in plan.columns:
        if key in held:
            value = held[key]
        elif default is not None and default.is_scalar:
            value = default.arg
        elif default is not None and default.is_callable:
            value = default.arg(None)  # wrapped by SQLAlchemy to take a context
        else:
            value = None
        values[key] = row[name] = value
    new_id = session.execute(plan.statement, row).scalar_one()
    for key, value in values.items():
        setattr(obj, key, value)
    obj.id = new_id
    make_transient_to_detached(obj)  # the row exists: no read to hold it
    session.add(obj)
