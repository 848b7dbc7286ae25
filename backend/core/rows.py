"""A new row inserted in one statement, its object known to the session without a read.

The ORM's unit of work (``session.add`` then ``flush``) costs more CPU than the database's
own work on a single-row insert; on the hot paths (a submit) the row goes in as one Core
``INSERT … RETURNING id`` instead, and the object is attached as the row it now is."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, inspect
from sqlalchemy.orm import Session, make_transient_to_detached


def insert_new(session: Session, obj: Any) -> None:
    """Insert ``obj`` (new, with an integer primary key ``id``), every column given: what
    the object holds, else the column's Python default, else NULL. The session then holds
    it as persistent and fully loaded, so reading any attribute needs no query."""
    mapper = inspect(type(obj))
    table = mapper.local_table
    held = inspect(obj).dict
    values: dict[str, Any] = {}
    for column in table.columns:
        if column.primary_key:
            continue
        key = mapper.get_property_by_column(column).key
        if key in held:
            value = held[key]
        elif column.default is not None and column.default.is_scalar:
            value = column.default.arg
        elif column.default is not None and column.default.is_callable:
            value = column.default.arg(None)  # wrapped by SQLAlchemy to take a context
        else:
            value = None
        values[key] = value
    columns = {mapper.get_property(key).columns[0].name: value for key, value in values.items()}
    new_id = session.execute(insert(table).returning(table.c.id), columns).scalar_one()
    for key, value in values.items():
        setattr(obj, key, value)
    obj.id = new_id
    make_transient_to_detached(obj)  # the row exists: no read to hold it
    session.add(obj)
