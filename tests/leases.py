"""Who holds the dispatcher's lease, read straight from a gateway's database (the tests that
kill or look for the dispatching process)."""

from __future__ import annotations

from sqlalchemy import create_engine, text


def dispatcher_holder(database_url: str) -> str | None:
    """The holder name (``host:pid:suffix``) in the ``dispatcher`` lease row, if any."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT holder FROM leases WHERE name = 'dispatcher'")
            ).scalar()
    finally:
        engine.dispose()


def holder_pid(holder: str) -> int:
    return int(holder.split(":")[1])
