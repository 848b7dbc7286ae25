"""A submit's job goes in as one statement, and the session holds it whole: reading the
job back for the answer sends nothing more (on SQLite and PostgreSQL)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import event, select

from compute.jobs.state import JobStatus
from compute.models import Job
from core.db import make_session_factory, session_scope, utcnow
from core.rows import insert_new
from tests.conftest import Account


def test_a_new_row_is_inserted_once_and_read_without_a_query(
    client: TestClient, user: Account
) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    sent: list[str] = []
    now = utcnow()
    job = Job(
        owner_id=user.id,
        name="one insert",
        status=JobStatus.QUEUED.value,
        model_type="classifier",
        strategy="fedavg",
        cpu_cores=1.0,
        memory_gb=0.5,
        max_runtime_s=60,
        spec={"a": [1, 2]},
        request={"b": {"c": "d"}},
        request_hash="0" * 64,
        created_at=now,
        updated_at=now,
    )

    def note(conn, cursor, statement, *args) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's write transaction starts here
            sent.append(statement)

    with session_scope(make_session_factory(engine)) as session:
        event.listen(engine, "before_cursor_execute", note)
        try:
            insert_new(session, job)
            inserted = len(sent)
            read = {column.key: getattr(job, column.key) for column in Job.__table__.columns}
            assert len(sent) == inserted == 1, sent  # one INSERT, and no read after it
        finally:
            event.remove(engine, "before_cursor_execute", note)
    assert read["gpu"] == 0 and read["attempts"] == 0 and read["status_reason"] == ""
    assert read["started_at"] is None and read["spec"] == {"a": [1, 2]}
    with session_scope(make_session_factory(engine)) as session:
        stored = session.scalar(select(Job).where(Job.id == job.id))
        assert stored is not None
        assert {column.key: getattr(stored, column.key) for column in Job.__table__.columns} == (
            read
        )
