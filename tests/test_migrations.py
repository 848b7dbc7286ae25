"""Alembic migrations apply, roll back and re-apply on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from core.db import Base
from core.migrations import downgrade_to_base, upgrade_to_head
from tests.conftest import drop_everything, pg_database, postgres_url


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def round_trip(url: str) -> None:
    upgrade_to_head(url)
    assert table_names(url) == set(Base.metadata.tables)
    downgrade_to_base(url)
    assert table_names(url) == set()
    upgrade_to_head(url)
    assert table_names(url) == set(Base.metadata.tables)


def test_round_trip_on_sqlite(tmp_path: Path) -> None:
    round_trip(f"sqlite:///{tmp_path / 'migrations.db'}")


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_url(), reason="TEST_DATABASE_URL not set")
def test_round_trip_on_postgresql() -> None:
    url = pg_database(postgres_url() or "", "distlm_migrations_test")
    drop_everything(url)
    round_trip(url)


def test_models_match_the_migrations(tmp_path: Path) -> None:
    """Autogenerate finds nothing to add: the ORM models and the migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'compare.db'}"
    upgrade_to_head(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"render_as_batch": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_constraint_names_follow_the_naming_convention(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'names.db'}"
    upgrade_to_head(url)
    inspector = inspect(create_engine(url))
    foreign_keys = inspector.get_foreign_keys("jobs")
    assert [fk["name"] for fk in foreign_keys] == ["fk_jobs_owner_id_users"]
    uniques = {u["name"] for u in inspector.get_unique_constraints("users")}
    assert "uq_users_username" in uniques
