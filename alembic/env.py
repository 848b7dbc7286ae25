"""Alembic environment: the target URL is the one given by the caller, else the settings."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

import auth.models  # noqa: F401 - registers the tables on Base.metadata
import compute.models  # noqa: F401
import ledger.models  # noqa: F401
from core.db import Base, UTCDateTime, make_engine
from core.settings import get_settings, normalise_database_url

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render our UTCDateTime as a plain timezone-aware DateTime in migration files."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return normalise_database_url(url) if url else get_settings().database_url


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    engine = make_engine(url)
    sqlite = url.startswith("sqlite")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,  # SQLite alters tables by copying them
            render_item=render_item,
        )
        if sqlite:
            # Copying a table that others reference (ledger_accounts) drops it: with foreign
            # keys on, SQLite refuses. Off for the migration (the pragma is a no-op inside a
            # transaction, so on the raw connection before ours begins), checked after.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            raw = connection.connection.driver_connection
            broken = raw.execute("PRAGMA foreign_key_check").fetchall()
            raw.execute("PRAGMA foreign_keys=ON")
            if broken:
                raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
