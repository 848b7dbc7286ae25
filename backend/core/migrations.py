"""Apply the alembic migrations programmatically (used by the launcher and the tests).

Several gateway processes may start at once (``uvicorn --workers 4``, two hosts on one
PostgreSQL): the upgrade runs under a lock, so that one process migrates and the others
find the database at head. PostgreSQL: an advisory lock, held on its own connection;
SQLite: an exclusive lock on a file beside the database (SQLite lives on one machine).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from core.settings import PROJECT_ROOT

MIGRATION_LOCK_KEY = 0x44495354  # "DIST": any constant shared by every gateway process


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    # '%' is an interpolation character in ini files.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    if database_url.startswith("sqlite:///") and not database_url.endswith(":memory:"):
        path = Path(database_url.removeprefix("sqlite:///") + ".migrate.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if database_url.startswith("postgresql"):
        engine = create_engine(database_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                    connection.commit()
        finally:
            engine.dispose()
        return
    yield


def upgrade_to_head(database_url: str, *, locked: bool = False) -> None:
    """Migrate to head; ``locked``: the caller already holds ``migration_lock``."""
    if locked:
        command.upgrade(alembic_config(database_url), "head")
        return
    with migration_lock(database_url):
        command.upgrade(alembic_config(database_url), "head")


def downgrade_to_base(database_url: str) -> None:
    with migration_lock(database_url):
        command.downgrade(alembic_config(database_url), "base")
