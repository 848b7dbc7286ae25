"""A job's event stream and logs, on the session's Ray cluster: events arrive in order while
a job runs, a reconnect with Last-Event-ID resumes with no gap and no duplicate, another
user gets 404; a failed job's logs say why; a chatty job's logs stay within their bound."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from app.routes.job_stream import read_events
from compute.jobs.events import Cursor, add_log
from compute.jobs.service import transition_job
from compute.jobs.state import JobStatus
from compute.models import Job, JobEvent, JobMetric
from core.db import utcnow
from tests.conftest import Account, job_state, submit_job, wait_until_finished

SMALL_SPLIT = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 300},
    "training_config": {"strategy": "split", "epochs": 2, "batch_size": 32,
                        "loader": {"cpu_cores": 0.5, "memory": 0.5}},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
}  # fmt: skip


def read_stream(
    client: TestClient,
    headers: dict,
    job_id: int,
    last: str | None = None,
    until: Callable[[tuple], bool] | None = None,
) -> list:
    """The stream's events, (id, kind, data), until its `end` or the first ``until`` accepts
    (then the client disconnects)."""
    if last is not None:
        headers = {**headers, "Last-Event-ID": last}
    items, current = [], {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                key, _, value = line.partition(":")
                current[key] = value.strip()
            elif not line and current:
                items.append((current["id"], current["event"], json.loads(current["data"])))
                if current["event"] == "end" or (until and until(items[-1])):
                    break
                current = {}
    return items


def cursor(event_id: str) -> tuple[int, int]:
    first, second = event_id.split("-")
    return int(first), int(second)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.database
def test_the_event_stream_is_in_order_and_resumes_without_gap_or_duplicate(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client = ray_client
    user, other = make_account("alice"), make_account("bob")
    slowed = {**SMALL_SPLIT, "training_config": {**SMALL_SPLIT["training_config"],
                                                 "step_delay_s": 0.2}}  # fmt: skip
    job = client.post("/jobs/submit", headers=user.headers, json=slowed).json()
    assert client.get(f"/jobs/{job['id']}/events", headers=other.headers).status_code == 404
    # Disconnect while the job runs, then resume from the last id seen.
    before = read_stream(
        client, user.headers, job["id"], until=lambda i: i[1] == "metric" and i[2]["step"] >= 3
    )
    assert job_state(client, user.headers, job["id"])["status"] == "running"
    after = read_stream(client, user.headers, job["id"], last=before[-1][0])
    items = read_stream(client, user.headers, job["id"])  # the whole stream, once it ended
    assert before + after == items  # no gap, no duplicate
    assert items[-1][1] == "end"
    cursors = [cursor(item[0]) for item in items[:-1]]
    assert all(b > a for a, b in itertools.pairwise(cursors))  # strictly in order
    statuses = [data["status"] for _, kind, data in items if kind == "status"]
    assert statuses == ["scheduled", "running", "succeeded"]
    steps = [data["step"] for _, kind, data in items if kind == "metric" and data["step"] > 0]
    assert steps == sorted(steps) and steps[-1] == 2 * 9  # 270 train rows, batches of 32
    kinds = {kind for _, kind, _ in items}
    assert {"status", "metric", "usage", "log"} <= kinds
    said = [data["message"] for _, kind, data in items if kind == "log"]
    assert any(m.startswith("training on 270 samples") for m in said), said
    assert any(m.startswith("epoch 2 done: loss") for m in said), said

    middle = len(items) // 2
    resumed = read_stream(client, user.headers, job["id"], last=items[middle][0])
    assert [i[0] for i in resumed[:-1]] == [i[0] for i in items[middle + 1 : -1]]
    assert resumed[:-1] == items[middle + 1 : -1]
    bad = client.get(f"/jobs/{job['id']}/events", headers={**user.headers, "Last-Event-ID": "x"})
    assert bad.status_code == 422


@pytest.mark.ray
@pytest.mark.slow
def test_a_failed_jobs_logs_say_why(ray_client: TestClient, two_nodes, make_account) -> None:
    client = ray_client
    user = make_account("alice")
    body = {
        **SMALL_SPLIT,
        "data_config": {"data_source": "local", "dataset_name": "mine", "path": "no/such.npz"},
    }
    job = client.post("/jobs/submit", headers=user.headers, json=body).json()
    done = wait_until_finished(client, user.headers, job["id"])
    assert done["status"] == "failed"
    logs = client.get(f"/jobs/{job['id']}/logs", headers=user.headers).json()
    messages = [line["message"] for line in logs["items"]]
    assert any("placed on node" in m for m in messages)
    story = [m for m in messages if "does not exist under the data root" in m]
    assert story and any("fix the job's spec" in m for m in story), messages
    assert all(str(client.app.state.settings.data_root) not in m for m in messages)
    errors = [line for line in logs["items"] if line["level"] == "error"]
    assert errors and logs["dropped"] == 0


def test_a_chatty_jobs_logs_stay_within_their_bound(
    client: TestClient, user: Account, db: Session
) -> None:
    job_id = submit_job(client, user.headers)["id"]
    job = db.get(Job, job_id)
    for number in range(120):
        add_log(db, job, f"line {number}", limit=50)
    db.commit()
    logs = client.get(f"/jobs/{job_id}/logs?limit=5000", headers=user.headers).json()
    assert logs["dropped"] == 70 and len(logs["items"]) == 50
    assert [line["message"] for line in logs["items"]][-1] == "line 119"
    assert logs["items"][0]["message"] == "line 70"  # the oldest went first
    long = "x" * 5000
    add_log(db, job, long, limit=50)
    db.commit()
    last = client.get(f"/jobs/{job_id}/logs?after={logs['items'][-1]['id']}", headers=user.headers)
    assert len(last.json()["items"][0]["message"]) <= 2001


def test_a_read_of_the_stream_sees_a_commit_whole_or_not_at_all(
    client: TestClient, user: Account, db: Session
) -> None:
    """A commit that lands between the stream's read of events and its read of metric
    points (a log line, then a point a moment later) is seen whole or not at all: what a
    live reader sends is what a replay from the start sends, in the same order."""
    job_id = submit_job(client, user.headers)["id"]
    factory = client.app.state.read_session_factory
    engine = factory.kw["bind"]
    committed = []

    def commit_between(_connection, _cursor, statement: str, *_args) -> None:
        if "job_events" in statement and not committed:
            committed.append(statement)
            now = utcnow()
            line = {"level": "info", "source": "runner", "message": "before the point"}
            db.add(JobEvent(job_id=job_id, at=now, kind="log", payload=line))
            later = now + dt.timedelta(milliseconds=1)
            db.add(JobMetric(job_id=job_id, step=1, values={"loss": 1.0}, recorded_at=later))
            db.commit()

    event.listen(engine, "after_cursor_execute", commit_between)
    try:
        live, _ = read_events(factory, job_id, Cursor())
    finally:
        event.remove(engine, "after_cursor_execute", commit_between)
    assert committed
    rest, _ = read_events(factory, job_id, live[-1].cursor if live else Cursor())
    whole, _ = read_events(factory, job_id, Cursor())
    assert [(str(i.cursor), i.kind) for i in live + rest] == [
        (str(i.cursor), i.kind) for i in whole
    ]
    assert [i.kind for i in whole][-2:] == ["log", "metric"]


def test_a_line_written_before_another_but_committed_after_it_is_not_skipped(
    client: TestClient, user: Account, db: Session, settings
) -> None:
    """Two writers of one job's events: the first writes a line and commits last. A reader
    between the commits must not have been sent the second line (its cursor would then be
    past the first, which it would never see); what it sent, then what it reads from there,
    is the whole stream."""
    job_id = submit_job(client, user.headers)["id"]
    factory = client.app.state.read_session_factory
    add_log(db, db.get(Job, job_id), "written first, committed last")  # open, uncommitted
    engine = create_engine(settings.database_url)
    second_done = threading.Event()

    def second_writer() -> None:
        with Session(engine) as other:
            add_log(other, other.get(Job, job_id), "written second, committed first")
            other.commit()
        second_done.set()

    writer = threading.Thread(target=second_writer)
    writer.start()
    try:
        second_done.wait(timeout=1.0)  # done at once only where nothing orders the writers
        live, _ = read_events(factory, job_id, Cursor())
    finally:
        db.commit()
        writer.join(timeout=30)
        engine.dispose()
    assert second_done.is_set()
    rest, _ = read_events(factory, job_id, live[-1].cursor if live else Cursor())
    whole, _ = read_events(factory, job_id, Cursor())
    said = [item.data["message"] for item in whole]
    assert said == ["written first, committed last", "written second, committed first"]
    assert [str(i.cursor) for i in live + rest] == [str(i.cursor) for i in whole]


def test_every_transaction_that_writes_a_jobs_events_locks_its_row_once(
    client: TestClient, user: Account, db: Session
) -> None:
    job = db.get(Job, submit_job(client, user.headers)["id"])
    db.commit()  # the job read in a transaction that has ended
    locks: list[str] = []

    def note_lock(_connection, _cursor, statement: str, *_args) -> None:
        if "FOR NO KEY UPDATE" in statement:
            locks.append(statement)

    event.listen(db.get_bind(), "before_cursor_execute", note_lock)
    try:
        per_transaction = []
        for lines in (["a", "b"], ["c"], ["placed"]):
            if lines == ["placed"]:  # a status change writes the row: it holds the lock
                transition_job(db, job, JobStatus.SCHEDULED, "placed on node 1")
            for line in lines:
                add_log(db, job, line)
            db.commit()
            per_transaction.append(len(locks))
            locks.clear()
    finally:
        event.remove(db.get_bind(), "before_cursor_execute", note_lock)
    postgres = db.get_bind().dialect.name == "postgresql"
    assert per_transaction == ([1, 1, 0] if postgres else [0, 0, 0])  # SQLite: one writer
