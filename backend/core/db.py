"""Engine, sessions and the declarative base shared by every model.

SQLite note: pysqlite's own transaction handling is turned off and every transaction that
may write starts with ``BEGIN IMMEDIATE``. SQLAlchemy silently drops ``FOR UPDATE`` on
SQLite, so taking the write lock up front is what makes read-check-write sequences
(idempotency keys, balances) safe there. Read-only sessions (``read_only_factory``: GET
requests, /health, the dispatcher's reads) begin with a plain deferred ``BEGIN``: in WAL
mode they never wait for a writer and never hold up one.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


WRITER_QUEUE_TIMEOUT_S = 30.0


class _WriterQueue:
    """Writers queue here before BEGIN IMMEDIATE instead of in SQLite's busy handler, which
    sleeps in growing steps (up to 100 ms) while the lock may long be free again: with 8
    concurrent writers that put a p99 of 0.6 s on a 5 ms heartbeat. Threads of a process
    wait on a lock; processes on one database file (several gateway workers) on a file
    lock beside it, polled in steps of at most 5 ms. Only a fast path: SQLite's own lock
    stays what guarantees correctness, so a queue given up after the timeout (it should
    never be) costs a wait, never a wrong answer."""

    def __init__(self, database: str | None) -> None:
        self.threads = threading.Lock()
        self.file = open(f"{database}.writers.lock", "a") if database else None  # noqa: SIM115

    def acquire(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if not self.threads.acquire(timeout=timeout_s):
            return False
        if self.file is None:
            return True
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.threads.release()
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.005)

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.threads.release()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    database = engine.url.database
    writers = _WriterQueue(database if database and database != ":memory:" else None)
    held = "distlm_holds_writer_lock"

    def release(connection_info: dict[str, Any]) -> None:
        if connection_info.pop(held, False):
            writers.release()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        if not read_only and writers.acquire(WRITER_QUEUE_TIMEOUT_S):
            connection.info[held] = True
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(connection: Any) -> None:
        release(connection.info)

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        release(record.info)  # a transaction that ended without commit or rollback


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and not url.endswith(":memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    _ping_when_idle(engine)
    return engine


# A connection back in the pool within this long is taken as alive: under load connections
# come back every few milliseconds, and a ping on every checkout (SQLAlchemy's pre_ping) was
# one more round trip on every request. One idle longer (a database restart, a firewall's
# idle timeout) is pinged first, and replaced if the ping fails.
IDLE_BEFORE_PING_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < IDLE_BEFORE_PING_S:
            return  # new, or just used
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as exc:  # any failure: the pool discards it and connects again
            raise DisconnectionError(f"an idle connection was dead: {exc}") from exc


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL per process."""
    return make_engine(url)


READ_ONLY_OPTION = "distlm_read_only"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


def read_only_factory(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for reads only: a deferred transaction on SQLite, and a flush that would
    write raises (a read path that writes is a bug: it would hold SQLite's lock)."""
    engine = factory.kw["bind"]
    read_only = sessionmaker(
        bind=engine.execution_options(**{READ_ONLY_OPTION: True}),
        expire_on_commit=False,
        autoflush=True,
    )

    @event.listens_for(read_only, "before_flush")
    def _refuse_writes(session: Session, _context: Any, _instances: Any) -> None:
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("a read-only session tried to write")

    return read_only


def one_snapshot(session: Session) -> None:
    """Every statement of the session's transaction sees the same committed data. PostgreSQL's
    default (READ COMMITTED) gives each statement a snapshot of its own, so a read of two
    tables could see one before a commit and the other after it; REPEATABLE READ gives the
    transaction one. SQLite's reads already share one. Call before the first statement."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """The one unit of work for code outside requests: commit on success, else roll back."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def database_ok(engine: Engine) -> bool:
    """A cheap liveness probe for /health."""
    from sqlalchemy import text

    try:
        with engine.execution_options(**{READ_ONLY_OPTION: True}).connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
