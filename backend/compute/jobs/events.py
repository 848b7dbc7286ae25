"""A job's event stream and its logs: status changes, usage and log lines stored as they
happen (metric points stay in ``job_metrics``), read back in order from a cursor.

The stream's cursor is two numbers, ``<event id>-<metric id>``: the last ``job_events`` row
and the last ``job_metrics`` row a reader has seen, so a reconnect resumes with no gap and no
duplicate whichever table the next item comes from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from compute.models import Job, JobEvent, JobMetric
from core.db import utcnow
from core.errors import InvalidInputError

MAX_LOG_LINES = 2000  # per job; the oldest go first
MAX_LOG_LINE_CHARS = 2000
LOG_LEVELS = ("debug", "info", "warning", "error")


_STREAM_LOCKS = "distlm_job_stream_locks"  # session.info: (transaction, job ids it locked)


def lock_stream(session: Session, job: Job) -> None:
    """Lock the job's row, until this transaction ends, before writing an event of it: its
    events then take their ids in the order their transactions commit, so a reader that has
    seen event n never misses an event under n that commits later (PostgreSQL; SQLite has
    one writer at a time). Once per job and transaction."""
    held = _locked_rows(session)
    if held is not None and job.id not in held:
        # The lock an UPDATE of the row takes: writers of the job's events wait on one
        # another and on its updates, not on rows that merely refer to it.
        session.execute(select(Job.id).where(Job.id == job.id).with_for_update(key_share=True))
        held.add(job.id)


def _locked_rows(session: Session) -> set[int] | None:
    """The jobs whose rows this transaction has locked for their events (None on SQLite)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    session.connection()  # the transaction begun, so that it is the one the locks are noted for
    transaction = session.get_transaction()
    held = session.info.get(_STREAM_LOCKS)
    if held is None or held[0] is not transaction:
        held = session.info[_STREAM_LOCKS] = (transaction, set())
    return held[1]


def record_event(
    session: Session, job: Job, kind: str, payload: dict[str, Any], *, locked: bool = False
) -> None:
    """One event of the job; ``locked``: this transaction has just written the job's row
    (which holds its lock), so no other lock is taken, now or for its next events."""
    if locked:
        held = _locked_rows(session)
        if held is not None:
            held.add(job.id)
    else:
        lock_stream(session, job)
    session.add(JobEvent(job_id=job.id, at=utcnow(), kind=kind, payload=payload))


def record_status(session: Session, job: Job) -> None:
    """The job's status as it was just written (``transition_job`` flushed its row)."""
    record_event(
        session,
        job,
        "status",
        {"status": job.status, "reason": job.status_reason, "attempt": job.attempts},
        locked=True,
    )


def add_log(
    session: Session,
    job: Job,
    message: str,
    *,
    level: str = "info",
    source: str = "dispatcher",
    limit: int = MAX_LOG_LINES,
) -> None:
    """One log line of the job, kept within ``limit`` lines (the oldest dropped, counted)."""
    text = message if len(message) <= MAX_LOG_LINE_CHARS else message[:MAX_LOG_LINE_CHARS] + "…"
    record_event(
        session,
        job,
        "log",
        {"level": level if level in LOG_LEVELS else "info", "source": source, "message": text},
    )
    session.flush()
    count = session.scalar(
        select(func.count()).where(JobEvent.job_id == job.id, JobEvent.kind == "log")
    )
    excess = (count or 0) - limit
    if excess > 0:
        oldest = (
            select(JobEvent.id)
            .where(JobEvent.job_id == job.id, JobEvent.kind == "log")
            .order_by(JobEvent.id)
            .limit(excess)
        )
        ids = session.scalars(oldest).all()
        session.execute(delete(JobEvent).where(JobEvent.id.in_(ids)))
        job.logs_dropped = (job.logs_dropped or 0) + len(ids)


@dataclass(frozen=True)
class Cursor:
    event_id: int = 0
    metric_id: int = 0

    def __str__(self) -> str:
        return f"{self.event_id}-{self.metric_id}"

    @classmethod
    def parse(cls, value: str | None) -> Cursor:
        if not value:
            return cls()
        try:
            event_id, metric_id = (int(part) for part in value.split("-"))
        except ValueError:
            raise InvalidInputError(
                "Last-Event-ID must be '<event id>-<metric id>', as the stream sent it"
            ) from None
        if not (0 <= event_id < 2**63 and 0 <= metric_id < 2**63):
            raise InvalidInputError("Last-Event-ID is out of range")
        return cls(event_id, metric_id)


@dataclass(frozen=True)
class StreamItem:
    cursor: Cursor
    kind: str  # status | metric | usage | log
    at: dt.datetime
    data: dict[str, Any]


MAX_ROW_ID = 2**31 - 1  # the id columns are 32-bit on PostgreSQL


def row_id(after: int) -> int:
    """A cursor as the id column can take it: no row's id is larger than MAX_ROW_ID, so
    "after" anything larger means after every row (sent as is, PostgreSQL refused it)."""
    return min(after, MAX_ROW_ID)


def events_after(
    session: Session, job_id: int, cursor: Cursor, limit: int = 500
) -> list[StreamItem]:
    """The job's items after ``cursor``, oldest first (events and metric points merged by
    the time they were stored)."""
    events = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > row_id(cursor.event_id))
        .order_by(JobEvent.id)
        .limit(limit)
    ).all()
    metrics = session.scalars(
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.id > row_id(cursor.metric_id))
        .order_by(JobMetric.id)
        .limit(limit)
    ).all()
    merged = sorted(
        [(e.at, 0, e.id, e) for e in events] + [(m.recorded_at, 1, m.id, m) for m in metrics],
        key=lambda item: (item[0], item[1], item[2]),
    )
    items: list[StreamItem] = []
    event_id, metric_id = cursor.event_id, cursor.metric_id
    for _, _, _, row in merged[:limit]:
        if isinstance(row, JobEvent):
            event_id = row.id
            items.append(StreamItem(Cursor(event_id, metric_id), row.kind, row.at, row.payload))
        else:
            metric_id = row.id
            data = {"step": row.step, "values": row.values}
            items.append(StreamItem(Cursor(event_id, metric_id), "metric", row.recorded_at, data))
    return items


def job_logs(session: Session, job: Job, *, after: int = 0, limit: int = 1000) -> list[JobEvent]:
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job.id, JobEvent.kind == "log", JobEvent.id > row_id(after))
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )
