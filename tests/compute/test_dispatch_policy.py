"""Every decision of the dispatcher's pure policy, without Ray or a database."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest

from compute.billing.usage import JobUsage
from compute.dispatch.policy import DispatchLimits, RunningJob, decide, without_roots
from compute.jobs.state import JobStatus
from ledger.pricing import Rates
from protocol.events import (
    CheckpointEvent,
    MetricEvent,
    RecordedEvent,
    RunState,
    StatusEvent,
    UsageEvent,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RATES = Rates(
    gpu_hour=Decimal(1), cpu_core_hour=Decimal(1), memory_gb_hour=Decimal(0), fee_percent=Decimal(0)
)
LIMITS = DispatchLimits(max_attempts=3, start_timeout_s=600, hidden_roots=("/srv/storage",))
JOB = RunningJob(
    job_id=7,
    attempt=1,
    event_cursor=1,
    updated_at=T0,
    started_at=T0,
    max_runtime_s=3600,
    cancel_requested=False,
    budget=2_000_000,  # two CPU-core hours
    charged_nodes=frozenset({2}),
)


def events(*items, start: int = 2) -> list[RecordedEvent]:
    return [RecordedEvent(seq=start + i, at=0.0, event=e) for i, e in enumerate(items)]


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


NOW = T0 + dt.timedelta(seconds=10)


def run(job: RunningJob = JOB, fresh=(), now: dt.datetime = NOW):
    return decide(job, fresh, now=now, limits=LIMITS, rates=RATES)


def test_new_metrics_are_stored_and_the_job_goes_on() -> None:
    fresh = events(MetricEvent(1, {"loss": 2.0}), CheckpointEvent(1, "ckpt"))
    decision = run(fresh=fresh)
    assert decision.status is None and decision.events == tuple(fresh)
    assert not decision.stops_runner


def test_success_ends_the_job_and_later_events_are_not_stored() -> None:
    fresh = events(MetricEvent(5, {}), StatusEvent(RunState.SUCCEEDED), MetricEvent(6, {}))
    decision = run(fresh=fresh)
    assert decision.status is JobStatus.SUCCEEDED
    assert [r.seq for r in decision.events] == [2, 3]
    assert decision.stops_runner


def test_a_cancel_reported_by_the_runner_ends_it_cancelled() -> None:
    decision = run(fresh=events(StatusEvent(RunState.CANCELLED)))
    assert decision.status is JobStatus.CANCELLED


def test_a_requested_cancel_stops_a_running_job() -> None:
    decision = run(dataclasses.replace(JOB, cancel_requested=True), events(MetricEvent(1, {})))
    assert (decision.status, decision.reason) == (JobStatus.CANCELLED, "cancelled while running")
    assert len(decision.events) == 1  # what it did before the cancel is still stored


def test_a_final_failure_fails_at_once_without_server_paths() -> None:
    failed = StatusEvent(RunState.FAILED, "no file /srv/storage/jobs/7/x", retryable=False)
    decision = run(fresh=events(failed))
    assert decision.status is JobStatus.FAILED
    assert decision.reason == "failed: no file jobs/7/x"
    assert not decision.attempt_lost  # its own failure: what it ran is charged


def test_a_retryable_failure_is_re_planned_to_resume() -> None:
    decision = run(fresh=events(StatusEvent(RunState.FAILED, "node died", retryable=True)))
    assert decision.status is JobStatus.QUEUED
    assert decision.reason == "attempt 1 lost (node died); will resume from its last checkpoint"
    assert decision.attempt_lost  # its work since the checkpoint is not charged


def test_a_retryable_failure_of_a_cancelled_job_is_not_retried() -> None:
    job = dataclasses.replace(JOB, cancel_requested=True)
    failed = StatusEvent(RunState.FAILED, "node died", retryable=True)
    assert run(job, events(failed)).status is JobStatus.FAILED


def test_the_last_attempt_fails_instead_of_retrying() -> None:
    job = dataclasses.replace(JOB, attempt=3)
    decision = run(job, events(StatusEvent(RunState.FAILED, "node died", retryable=True)))
    assert decision.status is JobStatus.FAILED
    assert decision.reason == "failed after 3 attempts: node died"
    assert decision.attempt_lost  # lost with a node, so its unsaved work is not charged


def test_a_lost_runner_is_re_planned_or_cancelled() -> None:
    assert run(fresh=None).status is JobStatus.QUEUED
    assert "its runner was lost" in run(fresh=None).reason
    cancelled = run(dataclasses.replace(JOB, cancel_requested=True), None)
    assert cancelled.status is JobStatus.CANCELLED
    assert run(dataclasses.replace(JOB, attempt=3), None).status is JobStatus.FAILED


def test_the_budget_stops_the_job_counting_the_new_usage() -> None:
    an_hour = UsageEvent(2, cpu_core_seconds=3600)
    assert run(fresh=events(an_hour)).status is None  # 1 of 2 tokens
    decision = run(fresh=events(an_hour, an_hour))  # 2 of 2
    assert decision.status is JobStatus.FAILED
    assert decision.reason == (
        "stopped: its budget of 2.0 tokens is used up (max_tokens or the hold); "
        "it is charged that budget"
    )
    assert not decision.attempt_lost  # the job's own doing: all it ran is charged
    assert len(decision.events) == 2  # the usage is stored, then charged at settlement


def test_usage_on_the_owners_own_node_costs_nothing() -> None:
    own = UsageEvent(1, cpu_core_seconds=36_000)  # node 1 is not charged
    assert run(fresh=events(own)).status is None


def test_usage_already_stored_counts_toward_the_budget() -> None:
    stored = JobUsage().plus([UsageEvent(2, cpu_core_seconds=7000.0)])
    job = dataclasses.replace(JOB, usage=stored)
    assert run(job, events(UsageEvent(2, cpu_core_seconds=200))).status is JobStatus.FAILED


def test_work_no_checkpoint_saved_yet_counts_toward_the_budget() -> None:
    """The budget stops a job before it can run past its hold, saved or not."""
    job = dataclasses.replace(JOB, unsaved=(UsageEvent(2, cpu_core_seconds=7000, step=3),))
    assert run(job, events(UsageEvent(2, cpu_core_seconds=200, step=4))).status is (
        JobStatus.FAILED
    )
    assert run(job, events(UsageEvent(1, cpu_core_seconds=200, step=4))).status is None


def test_a_job_without_a_budget_is_never_stopped_for_cost() -> None:
    job = dataclasses.replace(JOB, budget=0)
    assert run(job, events(UsageEvent(2, cpu_core_seconds=1e7))).status is None


@pytest.mark.parametrize(("elapsed", "stopped"), [(3599, False), (3601, True)])
def test_max_runtime_stops_the_job(elapsed: int, stopped: bool) -> None:
    decision = run(fresh=events(MetricEvent(1, {})), now=at(elapsed))
    assert (decision.status is JobStatus.FAILED) is stopped
    if stopped:
        assert decision.reason == "stopped: exceeded max_runtime_s (3600 s)"


def test_an_attempt_that_never_starts_training_is_re_planned() -> None:
    job = dataclasses.replace(JOB, max_runtime_s=10**6)
    assert run(job, [], now=at(599)).status is None
    stalled = run(job, [], now=at(601))
    assert stalled.status is JobStatus.QUEUED
    assert "did not start training within 600 s" in stalled.reason
    # Training events arrived (cursor past 1): not stalled, however long it runs.
    assert run(job, events(MetricEvent(1, {})), now=at(5000)).status is None
    assert run(dataclasses.replace(job, event_cursor=5), [], now=at(5000)).status is None


def test_reasons_show_paths_relative_to_the_roots() -> None:
    assert without_roots("at /srv/storage/x and /srv/storage", ["/srv/storage"]) == "at x and ."
