"""POST /runs/{job_id}/events: a job's driver reports over HTTP with a credential scoped to
the job and attempt (issue 20 item 3). Refused for another job or attempt, after the attempt
ended, with a user's or a node's token; a usage claim beyond the node's slot for the
attempt's wall time is refused with nothing stored; a resent event is stored once."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth.models import Role
from auth.run_tokens import RunClaims, create_run_token
from compute.dispatch.run_inbox import run_events_after
from compute.models import Job, RunEvent
from core.db import utcnow
from core.settings import Settings
from protocol.events import MetricEvent, RecordedEvent, UsageEvent
from protocol.wire import recorded_to_wire
from tests.archives import tar_of
from tests.conftest import make_settings, register_node, submit_job

SLOT = {"node_id": 1, "gpu": 0, "cpu_cores": 2.0, "memory_gb": 1.0}


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    return make_settings(database_url, storage_path=tmp_path / "storage", max_upload_mb=1)


@pytest.fixture
def running_job(client: TestClient, db: Session, make_account) -> dict:
    """A job running its second attempt on node 1 (2 cores), started 100 s ago."""
    owner = make_account("olivia", Role.NODE_OWNER)
    user = make_account("alice")
    register_node(client, owner.headers, "m1")
    job = submit_job(client, user.headers)
    row = db.get(Job, job["id"])
    row.status, row.attempts, row.placement = "running", 2, [SLOT]
    row.started_at = row.updated_at = utcnow() - dt.timedelta(seconds=100)
    db.commit()
    return {**job, "user": user}


def credential(settings: Settings, job_id: int, attempt: int = 2, **expiry) -> dict:
    claims = RunClaims(job_id=job_id, attempt=attempt, node_id=1)
    token = create_run_token(
        claims,
        secret_key=settings.secret_key,
        expires_in=dt.timedelta(**(expiry or {"hours": 1})),
    )
    return {"Authorization": f"Bearer {token}"}


def wire(*events, start: int = 1) -> list[dict]:
    return [recorded_to_wire(RecordedEvent(start + i, 0.0, e)) for i, e in enumerate(events)]


def post(client: TestClient, job_id: int, headers: dict, events: list, attempt: int = 2):
    return client.post(
        f"/runs/{job_id}/events", headers=headers, json={"attempt": attempt, "events": events}
    )


def stored(db: Session, job_id: int) -> int:
    db.rollback()  # see what the gateway committed since
    return db.scalar(select(func.count()).where(RunEvent.job_id == job_id)) or 0


def test_a_drivers_events_are_kept_in_its_order_and_a_resend_is_stored_once(
    client: TestClient, db: Session, settings: Settings, running_job: dict
) -> None:
    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    events = wire(MetricEvent(1, {"loss": 2.0}), UsageEvent(1, 0, 20.0, 10.0, step=1))
    answer = post(client, job_id, auth, events)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 2, "cancel_requested": False}
    again = post(client, job_id, auth, [*events, *wire(MetricEvent(2, {"loss": 1.5}), start=3)])
    assert again.json()["accepted"] == 1
    db.rollback()
    kept = run_events_after(db, job_id, 2, after=0)
    assert [(r.seq, type(r.event).__name__) for r in kept] == [
        (1, "MetricEvent"),
        (2, "UsageEvent"),
        (3, "MetricEvent"),
    ]
    assert [r.seq for r in run_events_after(db, job_id, 2, after=2)] == [3]

    client.post(f"/jobs/{job_id}/cancel", headers=running_job["user"].headers)
    assert post(client, job_id, auth, []).json()["cancel_requested"] is True


def test_credentials_for_another_job_or_attempt_or_of_another_kind_are_refused(
    client: TestClient, db: Session, settings: Settings, running_job: dict, make_account
) -> None:
    job_id = running_job["id"]
    events = wire(MetricEvent(1, {"loss": 2.0}))
    other_job = submit_job(client, running_job["user"].headers)["id"]
    owner_node = register_node(client, make_account("oscar", Role.NODE_OWNER).headers, "m2")
    refusals = {
        "another job": (credential(settings, other_job), 403),
        "an older attempt": (credential(settings, job_id, attempt=1), 403),
        "an expired credential": (credential(settings, job_id, seconds=-1), 401),
        "a user's token": (running_job["user"].headers, 401),
        "a node's credential": ({"Authorization": f"Bearer {owner_node['credential']}"}, 401),
        "no credential": ({}, 401),
        "a forged signature": (
            {"Authorization": credential(settings, job_id)["Authorization"][:-4] + "AAAA"},
            401,
        ),
    }
    for what, (headers, status) in refusals.items():
        answer = post(client, job_id, headers, events)
        assert answer.status_code == status, (what, answer.text)
        assert answer.json()["error"], what
    # An older attempt's events, even with this attempt's credential, are refused too.
    assert post(client, job_id, credential(settings, job_id), events, attempt=1).status_code == 403
    assert stored(db, job_id) == 0


def test_a_driver_of_an_attempt_that_ended_is_refused(
    client: TestClient, db: Session, settings: Settings, running_job: dict
) -> None:
    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    row = db.get(Job, job_id)
    row.status, row.attempts = "running", 3  # the dispatcher gave attempt 2 up
    db.commit()
    answer = post(client, job_id, auth, wire(MetricEvent(1, {"loss": 2.0})))
    assert answer.status_code == 409
    assert "attempt 2" in answer.json()["detail"]
    assert stored(db, job_id) == 0


@pytest.mark.parametrize(
    ("usage", "why"),
    [
        (UsageEvent(1, 0.0, 2.0 * 100 * 1.2, 0.0, step=1), "more than its slot allows"),
        (UsageEvent(1, 5.0 * 100, 1.0, 0.0, step=1), "gpu_seconds"),  # no GPU in the slot
        (UsageEvent(7, 0.0, 1.0, 0.0, step=1), "node 7, which is not in the placement"),
    ],
)
def test_a_usage_claim_beyond_the_slot_is_refused_and_nothing_is_stored(
    client: TestClient,
    db: Session,
    settings: Settings,
    running_job: dict,
    usage: UsageEvent,
    why: str,
) -> None:
    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    fine = UsageEvent(1, 0.0, 2.0 * 50, 1.0 * 50, step=1)  # half the attempt's wall time
    assert post(client, job_id, auth, wire(fine)).status_code == 200
    answer = post(client, job_id, auth, wire(MetricEvent(2, {}), usage, start=2))
    assert answer.status_code == 422, answer.text
    assert why in answer.json()["detail"]
    assert stored(db, job_id) == 1  # the whole request was refused


def test_a_malformed_event_is_a_422_naming_it(
    client: TestClient, db: Session, settings: Settings, running_job: dict
) -> None:
    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    bad = [*wire(MetricEvent(1, {})), {"seq": 2, "at": 0, "kind": "shell", "cmd": "rm -rf /"}]
    answer = post(client, job_id, auth, bad)
    assert answer.status_code == 422
    assert "unknown event kind 'shell'" in answer.json()["detail"]
    assert stored(db, job_id) == 0


# -- uploads: no shared filesystem ------------------------------------------------------------


def upload(client, job_id, headers, kind, body: bytes, *, digest=None, attempt=2):
    import hashlib

    return client.put(
        f"/runs/{job_id}/{kind}",
        params={"attempt": attempt},
        headers={**headers, "X-Content-SHA256": digest or hashlib.sha256(body).hexdigest()},
        content=body,
    )


def test_a_checkpoint_uploaded_by_the_driver_is_what_a_resume_downloads(
    client: TestClient, db: Session, settings: Settings, running_job: dict, tmp_path
) -> None:
    import hashlib
    import io
    import tarfile

    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    assert (
        client.get(f"/runs/{job_id}/checkpoint", params={"attempt": 2}, headers=auth).status_code
        == 404
    )
    first = tar_of({"state.json": b'{"step": 10}', "arrays.safetensors": b"\x00" * 5000})
    answer = upload(client, job_id, auth, "checkpoint", first)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"kind": "checkpoint", "size": len(first),
                             "sha256": hashlib.sha256(first).hexdigest()}  # fmt: skip
    # A later checkpoint replaces it whole: no file of the first survives.
    second = tar_of({"state.json": b'{"step": 20}', "weights.safetensors": b"\x01" * 3000})
    assert upload(client, job_id, auth, "checkpoint", second).status_code == 200

    # The next attempt (on another node) downloads exactly what was accepted.
    row = db.get(Job, job_id)
    row.attempts = 3
    db.commit()
    resume = credential(settings, job_id, attempt=3)
    got = client.get(f"/runs/{job_id}/checkpoint", params={"attempt": 3}, headers=resume)
    assert got.status_code == 200
    assert got.headers["x-content-sha256"] == hashlib.sha256(got.content).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(got.content)) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert files == {"state.json": b'{"step": 20}', "weights.safetensors": b"\x01" * 3000}
    # The old attempt's driver can no longer download, nor upload over it.
    assert (
        client.get(f"/runs/{job_id}/checkpoint", params={"attempt": 2}, headers=auth).status_code
        == 409
    )
    assert upload(client, job_id, auth, "checkpoint", first).status_code == 409


def test_a_models_upload_lands_where_its_owner_downloads_it(
    client: TestClient, settings: Settings, running_job: dict
) -> None:
    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    model = tar_of({"config.json": b"{}", "model.safetensors": b"\x02" * 100})
    assert upload(client, job_id, auth, "model", model).status_code == 200
    stored = settings.storage_path / "jobs" / str(job_id) / "model"
    assert sorted(p.name for p in stored.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"digest": "0" * 64}, 422, "sha256_mismatch"),
        ({"digest": "not-a-hash"}, 422, "bad_sha256"),
        ({"files": {"../escape.txt": b"x"}}, 422, "bad_archive_member"),
        ({"files": {"/etc/cron.d/x": b"x"}}, 422, "bad_archive_member"),
        ({"body": b"this is not a tar"}, 422, "bad_archive"),
        ({"kind": "secrets"}, 422, "invalid_input"),
    ],
)
def test_a_bad_upload_is_refused_and_the_accepted_checkpoint_stays(
    client: TestClient, settings: Settings, running_job: dict, change: dict, status: int, code: str
) -> None:
    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    good = tar_of({"state.json": b'{"step": 10}'})
    assert upload(client, job_id, auth, "checkpoint", good).status_code == 200
    body = change.get("body") or tar_of(change.get("files") or {"state.json": b'{"step": 99}'})
    answer = upload(client, job_id, auth, change.get("kind", "checkpoint"), body,
                    digest=change.get("digest"))  # fmt: skip
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == code
    checkpoint = settings.storage_path / "jobs" / str(job_id) / "checkpoint"
    assert (checkpoint / "state.json").read_bytes() == b'{"step": 10}'
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json"]
    assert not (settings.storage_path / "escape.txt").exists()
    assert list(checkpoint.parent.glob(".checkpoint.*.incoming")) == []  # nothing half-unpacked


def test_an_upload_over_the_limit_of_1_mb_is_a_413_and_another_jobs_credential_a_403(
    client: TestClient, settings: Settings, running_job: dict
) -> None:
    job_id = running_job["id"]
    big = tar_of({"weights.safetensors": b"\x00" * (1024 * 1024 + 1)})
    answer = upload(client, job_id, credential(settings, job_id), "checkpoint", big)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "upload_too_large"
    assert not (settings.storage_path / "jobs" / str(job_id) / "checkpoint").exists()
    small = tar_of({"state.json": b"{}"})
    other = credential(settings, job_id + 1)
    assert upload(client, job_id, other, "checkpoint", small).status_code == 403
    leftovers = list((settings.storage_path / "jobs" / str(job_id)).glob(".checkpoint.*.incoming"))
    assert leftovers == []


def test_a_source_jobs_model_goes_to_the_driver_of_a_job_that_starts_from_it_only(
    client: TestClient, db: Session, settings: Settings, running_job: dict
) -> None:
    """A job whose model is `job:<id>` gets that job's saved model over /runs (nodes share
    no disk); a job that starts from none gets a 404, another job's credential a 403."""
    import io
    import tarfile

    user = running_job["user"]
    job_id, auth = running_job["id"], credential(settings, running_job["id"])
    none = client.get(f"/runs/{job_id}/source-model", params={"attempt": 2}, headers=auth)
    assert none.status_code == 404, none.text

    model_dir = settings.storage_path / "jobs" / str(job_id) / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"kind": "mlp"}')
    source = db.get(Job, job_id)
    source.status, source.artifact_path = "succeeded", str(model_dir)
    db.commit()
    follow_up = submit_job(
        client,
        user.headers,
        model_config={"type": "simple_transformer", "model_name": f"job:{job_id}"},
    )
    row = db.get(Job, follow_up["id"])
    row.status, row.attempts, row.placement = "running", 1, [SLOT]
    db.commit()

    driver = credential(settings, follow_up["id"], attempt=1)
    got = client.get(f"/runs/{follow_up['id']}/source-model", params={"attempt": 1}, headers=driver)
    assert got.status_code == 200, got.text
    with tarfile.open(fileobj=io.BytesIO(got.content)) as archive:
        assert archive.extractfile("config.json").read() == b'{"kind": "mlp"}'
    other = client.get(f"/runs/{follow_up['id']}/source-model", params={"attempt": 1}, headers=auth)
    assert other.status_code == 403
