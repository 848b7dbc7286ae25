"""Alembic migrations apply, roll back and re-apply on SQLite and PostgreSQL, and the schema
they build is the one the ORM models describe: tables, columns (nullability and type family)
and indexes / unique constraints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Table, UniqueConstraint, create_engine, inspect
from sqlalchemy.engine import Inspector
from sqlalchemy.types import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    Numeric,
    String,
    TypeDecorator,
    TypeEngine,
)

# Every model module, so Base.metadata holds every table (as alembic/env.py imports them).
import auth.models  # noqa: F401
import compute.models  # noqa: F401
import ledger.models  # noqa: F401
from core.db import Base
from core.migrations import alembic_config, downgrade_to_base, upgrade_to_head
from tests.conftest import drop_everything, per_process, pg_database, postgres_url

# Checked in order: Float before Numeric (SQLAlchemy 2.0 makes Float a Numeric, 2.1 does not).
TYPE_FAMILIES: tuple[tuple[type[TypeEngine[object]], str], ...] = (
    (Boolean, "boolean"),
    (Integer, "integer"),
    (Float, "float"),
    (Numeric, "numeric"),
    (DateTime, "datetime"),
    (JSON, "json"),
    (String, "text"),
)


def type_family(type_: TypeEngine[object]) -> str:
    """A dialect-independent name for a column type: PostgreSQL reflects ``DOUBLE_PRECISION``
    and ``TIMESTAMP`` where SQLite reflects ``FLOAT`` and ``DATETIME``; both are what we meant."""
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    for generic, family in TYPE_FAMILIES:
        if isinstance(type_, generic):
            return family
    return type(type_).__name__.lower()


@dataclass(frozen=True)
class ColumnShape:
    family: str
    nullable: bool

    def __str__(self) -> str:
        return f"{self.family} {'NULL' if self.nullable else 'NOT NULL'}"


@dataclass
class TableShape:
    columns: dict[str, ColumnShape] = field(default_factory=dict)
    # ("index" | "unique index" | "unique constraint", column names in order)
    keys: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)


Schema = dict[str, TableShape]


def _model_table(table: Table) -> TableShape:
    shape = TableShape()
    for column in table.columns:
        shape.columns[column.name] = ColumnShape(type_family(column.type), bool(column.nullable))
    for index in table.indexes:
        kind = "unique index" if index.unique else "index"
        shape.keys.add((kind, tuple(column.name for column in index.columns)))
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            shape.keys.add(("unique constraint", tuple(c.name for c in constraint.columns)))
    return shape


def model_schema() -> Schema:
    return {name: _model_table(table) for name, table in Base.metadata.tables.items()}


def _database_table(inspector: Inspector, name: str) -> TableShape:
    shape = TableShape()
    for column in inspector.get_columns(name):
        shape.columns[column["name"]] = ColumnShape(
            type_family(column["type"]), bool(column["nullable"])
        )
    for index in inspector.get_indexes(name):
        if index.get("duplicates_constraint"):
            continue  # PostgreSQL's index behind a unique constraint, compared below
        kind = "unique index" if index["unique"] else "index"
        shape.keys.add((kind, tuple(str(c) for c in index["column_names"])))
    for constraint in inspector.get_unique_constraints(name):
        shape.keys.add(("unique constraint", tuple(constraint["column_names"])))
    return shape


def database_schema(url: str) -> Schema:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        names = set(inspector.get_table_names()) - {"alembic_version"}
        return {name: _database_table(inspector, name) for name in sorted(names)}
    finally:
        engine.dispose()


def schema_differences(models: Schema, database: Schema) -> list[str]:
    """One line per difference, naming the table and the column or key."""
    differences = [
        f"table {name}: in the models, not in the migrated database"
        for name in sorted(models.keys() - database.keys())
    ] + [
        f"table {name}: in the migrated database, not in the models"
        for name in sorted(database.keys() - models.keys())
    ]
    for name in sorted(models.keys() & database.keys()):
        expected, actual = models[name].columns, database[name].columns
        for column in sorted(expected.keys() - actual.keys()):
            differences.append(
                f"table {name}: column {column} is in the models, not in the migrated database"
            )
        for column in sorted(actual.keys() - expected.keys()):
            differences.append(
                f"table {name}: column {column} is in the migrated database, not in the models"
            )
        for column in sorted(expected.keys() & actual.keys()):
            if expected[column] != actual[column]:
                differences.append(
                    f"table {name}: column {column} is {expected[column]} in the models but "
                    f"{actual[column]} in the migrated database"
                )
        for kind, columns in sorted(models[name].keys - database[name].keys):
            differences.append(
                f"table {name}: {kind} on ({', '.join(columns)}) is in the models, "
                "not in the migrated database"
            )
        for kind, columns in sorted(database[name].keys - models[name].keys):
            differences.append(
                f"table {name}: {kind} on ({', '.join(columns)}) is in the migrated database, "
                "not in the models"
            )
    return differences


def assert_schema_matches_models(url: str) -> None:
    differences = schema_differences(model_schema(), database_schema(url))
    assert not differences, "migrated schema differs from the ORM models:\n" + "\n".join(
        differences
    )


def round_trip(url: str) -> None:
    upgrade_to_head(url)
    assert_schema_matches_models(url)
    downgrade_to_base(url)
    assert database_schema(url) == {}
    upgrade_to_head(url)
    assert_schema_matches_models(url)


def test_round_trip_on_sqlite(tmp_path: Path) -> None:
    round_trip(f"sqlite:///{tmp_path / 'migrations.db'}")


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_url(), reason="TEST_DATABASE_URL not set")
def test_round_trip_on_postgresql() -> None:
    url = pg_database(postgres_url() or "", per_process("distlm_migrations_test"))
    drop_everything(url)
    round_trip(url)


def test_schema_comparison_names_what_a_migration_lacks(tmp_path: Path) -> None:
    """The comparison is not vacuous: one revision short of head, 0003's columns are reported."""
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    command.upgrade(alembic_config(url), "0002")
    differences = schema_differences(model_schema(), database_schema(url))
    assert "table jobs: column placement is in the models, not in the migrated database" in (
        differences
    )
    assert "table nodes: column flag_reason is in the models, not in the migrated database" in (
        differences
    )


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


def test_0007_backfills_the_wallet_counters_from_existing_entries(tmp_path: Path) -> None:
    """A database with history from before 0007: after the upgrade the counters and the
    entries' owners say what the entries say, and the ledger invariant holds."""
    from sqlalchemy import text

    from core.db import make_session_factory
    from ledger.invariants import wallet_counter_problems

    url = f"sqlite:///{tmp_path / 'backfill.db'}"
    command.upgrade(alembic_config(url), "0006")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, username_key, password_hash, role, "
                "is_active, created_at) VALUES (1, 'payer', 'payer', 'x', 'user', 1, "
                "'2026-01-01'), (2, 'owner', 'owner', 'x', 'node_owner', 1, '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO ledger_accounts (id, kind, user_id, job_id, balance, created_at) "
                "VALUES (1, 'wallet', 1, NULL, 70, '2026-01-01'), "
                "(2, 'wallet', 2, NULL, 27, '2026-01-01'), "
                "(3, 'escrow', 1, 9, 0, '2026-01-01'), "
                "(4, 'platform_fee', NULL, NULL, 3, '2026-01-01'), "
                "(5, 'issuance', NULL, NULL, -100, '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO ledger_transactions (id, kind, idempotency_key, job_id, memo, "
                "created_at) VALUES (1, 'signup_grant', 'g', NULL, '', '2026-01-01'), "
                "(2, 'hold', 'h', 9, '', '2026-01-01'), (3, 'settlement', 's', 9, '', "
                "'2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO ledger_entries (transaction_id, account_id, kind, amount) VALUES "
                "(1, 5, 'grant', -100), (1, 1, 'grant', 100), "
                "(2, 1, 'hold', -40), (2, 3, 'hold', 40), "
                "(3, 3, 'charge', -30), (3, 2, 'node_credit', 27), (3, 4, 'platform_fee', 3), "
                "(3, 3, 'refund', -10), (3, 1, 'refund', 10)"
            )
        )
    engine.dispose()
    upgrade_to_head(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        counters = connection.execute(
            text(
                "SELECT user_id, earned, spent, history_entries FROM ledger_accounts "
                "WHERE kind = 'wallet' ORDER BY user_id"
            )
        ).all()
        owners = connection.execute(
            text("SELECT COUNT(*) FROM ledger_entries WHERE user_id IS NULL")
        ).scalar_one()
    assert [tuple(row) for row in counters] == [(1, 0, 30, 6), (2, 27, 0, 1)]
    assert owners == 2  # the issuance and platform-fee entries
    with make_session_factory(engine)() as session:
        assert wallet_counter_problems(session) == []
    engine.dispose()
