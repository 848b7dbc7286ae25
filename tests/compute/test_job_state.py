"""The job state machine refuses illegal transitions."""

from __future__ import annotations

import itertools

import pytest

from compute.jobs.state import (
    ALLOWED_TRANSITIONS,
    InvalidTransitionError,
    JobStatus,
    check_transition,
)

LEGAL = {
    ("queued", "scheduled"),
    ("queued", "failed"),
    ("queued", "cancelled"),
    ("scheduled", "running"),
    ("scheduled", "queued"),
    ("scheduled", "failed"),
    ("scheduled", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
}


@pytest.mark.parametrize(("current", "target"), itertools.product(JobStatus, JobStatus))
def test_only_the_documented_transitions_are_allowed(current: JobStatus, target: JobStatus) -> None:
    if (current.value, target.value) in LEGAL:
        check_transition(current, target)
    else:
        with pytest.raises(InvalidTransitionError):
            check_transition(current, target)


def test_terminal_states_have_no_way_out() -> None:
    for status in JobStatus:
        assert status.is_terminal() == (not ALLOWED_TRANSITIONS[status])
    assert {s for s in JobStatus if s.is_terminal()} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    }


def test_service_transition_sets_timestamps_and_refuses_illegal_moves(
    client,
    user,
    db,
    settings,
) -> None:
    from compute.billing.service import rates_from
    from compute.billing.usage import JobUsage
    from compute.jobs.service import finish_job, transition_job
    from compute.models import Job
    from tests.conftest import submit_job

    job_id = submit_job(client, user.headers)["id"]
    job = db.get(Job, job_id)
    assert job is not None
    transition_job(db, job, JobStatus.SCHEDULED, "placed on node 1")
    transition_job(db, job, JobStatus.RUNNING, "running")
    assert job.started_at is not None
    with pytest.raises(InvalidTransitionError):
        transition_job(db, job, JobStatus.SCHEDULED, "scheduled again while running")
    with pytest.raises(ValueError, match="finish_job"):
        transition_job(db, job, JobStatus.SUCCEEDED, "done")
    finish_job(db, job, JobStatus.SUCCEEDED, "done", usage=JobUsage(), rates=rates_from(settings))
    assert job.finished_at is not None
    db.commit()
    refused = client.post(f"/jobs/{job_id}/cancel", headers=user.headers)
    assert refused.status_code == 409
    assert "already succeeded" in refused.json()["detail"]
