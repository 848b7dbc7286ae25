"""Work lost with a node is neither charged nor credited (issue 26); all other work is,
checkpointed or not, and a job that ran pays at least the minimum charge (issue 24): the pure
rules of ``compute/billing/metering.py``, then the dispatcher against a scripted stand-in for
Ray, on SQLite and PostgreSQL.

Before this rule ES and FedAvg were paid per step or round: the steps a lost attempt ran
after its last checkpoint were paid, redone by the next attempt, and paid again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from auth.models import Role
from compute.billing.metering import is_saved, saved_by, unsaved_events, with_unsaved
from compute.billing.service import rates_from
from core.settings import Settings
from ledger.pricing import ResourceSeconds, platform_fee, tokens
from ledger.settlement import NodeUsage, node_charges
from protocol.events import (
    UsageEvent,
)
from tests.conftest import clear_tables, make_settings, register_node, submit_and_wait
from tests.metering_checks import stream
from tests.polling import wait_for
from tests.scripted_ray import CPU_BOX, ES_JOB, WORK_S, ScriptedRay

# -- the pure rules ----------------------------------------------------------------------


def test_usage_stays_unsaved_until_a_checkpoint_at_its_step_or_later() -> None:
    unsaved: dict = {}
    for step in (9, 10, 11):
        unsaved = with_unsaved(unsaved, UsageEvent(2, cpu_core_seconds=5.0, step=step))
    unsaved = with_unsaved(unsaved, UsageEvent(2, cpu_core_seconds=1.0, step=10))
    saved, rest = saved_by(unsaved, 10)
    assert [(u.step, u.cpu_core_seconds) for u in saved] == [(9, 5.0), (10, 6.0)]
    assert [(u.step, u.cpu_core_seconds) for u in unsaved_events(rest)] == [(11, 5.0)]


def test_stages_and_nodes_are_kept_apart_and_survive_json() -> None:
    unsaved = with_unsaved({}, UsageEvent(1, 2.0, 3.0, 4.0, stage="trainer", step=4))
    unsaved = with_unsaved(unsaved, UsageEvent(2, 0.0, 7.0, 1.0, stage="loader", step=4))
    assert unsaved_events(unsaved) == [
        UsageEvent(1, 2.0, 3.0, 4.0, stage="trainer", step=4),
        UsageEvent(2, 0.0, 7.0, 1.0, stage="loader", step=4),
    ]


def test_usage_a_checkpoint_already_covers_is_saved_at_once() -> None:
    late = UsageEvent(2, cpu_core_seconds=5.0, step=10)  # a worker reporting after rank 0 saved
    assert is_saved(late, saved_step=10)
    assert not is_saved(late, saved_step=None)  # nothing saved yet in this attempt
    assert not is_saved(UsageEvent(2, step=11), saved_step=10)


# -- the dispatcher, against a scripted Ray --------------------------------------------------


@pytest.fixture
def scripted_ray() -> ScriptedRay:
    return ScriptedRay([1, 2])


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, dispatch_interval_s=0.05)


@pytest.fixture
def app(settings: Settings, scripted_ray: ScriptedRay) -> Iterator[object]:
    clear_tables(settings.database_url)
    yield create_app(settings, dispatch=True, run_migrations=False, runners=scripted_ray)
    clear_tables(settings.database_url)


def test_a_lost_attempts_work_after_its_checkpoint_is_neither_charged_nor_credited(
    client: TestClient, settings: Settings, make_account
) -> None:
    owner = make_account("olivia", Role.NODE_OWNER)
    user = make_account("alice")
    nodes = [register_node(client, owner.headers, f"m{i}", CPU_BOX)["id"] for i in (1, 2)]
    assert nodes == [1, 2]
    response = client.post("/jobs/submit", headers=user.headers, json=ES_JOB)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    done = wait_for(
        lambda: (
            (j := client.get(f"/jobs/{job_id}", headers=user.headers).json())["status"]
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout_s=60,
        what=lambda: client.get(f"/jobs/{job_id}", headers=user.headers).json(),
    )
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["attempts"] == 2

    # Steps 1-20 once per worker: attempt 1's steps 11-13 (after its checkpoint) are not paid.
    saved = 20 * WORK_S
    for node in ("1", "2"):
        assert done["usage"][node]["cpu_core_seconds"] == pytest.approx(saved)
    assert done["unsaved_usage"] == {}

    rates = rates_from(settings)
    work = [NodeUsage(n, owner.id, ResourceSeconds(cpu_core_seconds=saved)) for n in (1, 2)]
    charges = node_charges(work, job_owner_id=user.id, held=10**15, rates=rates)
    balance = client.get("/tokens/balance/me", headers=user.headers).json()
    assert balance["spent"] == tokens(sum(charges.values())) > 0
    assert balance["held"] == 0
    earned = client.get("/tokens/balance/me", headers=owner.headers).json()["earned"]
    assert earned == tokens(sum(c - platform_fee(c, rates) for c in charges.values()))

    # The stream shows each saved part once, with its step and attempt, and the log says
    # what was not paid for and why.
    records = [
        (r["data"]["attempt"], r["data"]["step"])
        for r in stream(client, user.headers, job_id)
        if r["event"] == "usage"
    ]
    assert sorted(records) == sorted(
        [(1, s) for s in range(1, 11)] * 2 + [(2, s) for s in range(11, 21)] * 2
    )
    logs = client.get(f"/jobs/{job_id}/logs", headers=user.headers).json()["items"]
    dropped = [line["message"] for line in logs if "not charged or credited" in line["message"]]
    assert dropped == [
        "attempt 1: the work since its last checkpoint (step 10) is not charged or credited "
        "(30.0 CPU-core-seconds on node 1, 30.0 CPU-core-seconds on node 2)"
    ]


# -- a job that ends by its own doing pays for what it ran (issue 24, item 5) ----------------


def run_until_done(client: TestClient, headers: dict, spec: dict) -> dict:
    return submit_and_wait(client, headers, spec, timeout_s=60)


def charge_of(steps: int, settings: Settings, owner_id: int, user_id: int) -> int:
    """What ``steps`` steps of both workers cost, priced as settlement prices them."""
    work = ResourceSeconds(cpu_core_seconds=steps * WORK_S)
    usage = [NodeUsage(n, owner_id, work) for n in (1, 2)]
    return sum(
        node_charges(usage, job_owner_id=user_id, held=10**15, rates=rates_from(settings)).values()
    )


def test_a_job_stopped_at_its_runtime_limit_before_any_checkpoint_pays_for_what_it_ran(
    client: TestClient, settings: Settings, scripted_ray: ScriptedRay, lent_pair: tuple
) -> None:
    """The probe's split job ran 15 s, was stopped at its limit and paid 0."""
    owner, user = lent_pair
    # Two steps, no checkpoint (one every 10), then it runs on; its hold (12 cores for 5 s)
    # covers that work, so the runtime limit, not the budget, stops it.
    scripted_ray.idle_after = 2
    done = run_until_done(client, user.headers, {**ES_JOB, "max_runtime_s": 5})
    assert done["status"] == "failed"
    assert done["status_reason"] == "stopped: exceeded max_runtime_s (5 s)"
    assert done["usage"]["1"]["cpu_core_seconds"] == pytest.approx(2 * WORK_S)
    cost = charge_of(2, settings, owner.id, user.id)
    balance = client.get("/tokens/balance/me", headers=user.headers).json()
    assert balance["spent"] == tokens(cost) > settings.min_job_charge
    assert balance["held"] == 0
    assert_money_shown(client, user.headers, owner.headers, done["id"], charged=tokens(cost))


def assert_money_shown(
    client: TestClient, headers: dict, owner_headers: dict, job_id: int, *, charged: float
) -> None:
    """Issue 23 (3): the job and the list carry what was taken, refunded and earned per
    node, and they match the wallets."""
    job = client.get(f"/jobs/{job_id}", headers=headers).json()
    listed = next(
        item for item in client.get("/jobs", headers=headers).json()["items"]
        if item["id"] == job_id
    )  # fmt: skip
    for shown in (job, listed):
        assert shown["charged"] == pytest.approx(charged)
        assert shown["cost_so_far"] == pytest.approx(charged)  # not the pre-minimum figure
        assert shown["refunded"] == pytest.approx(shown["hold"] - charged)
        earned = client.get("/tokens/balance/me", headers=owner_headers).json()["earned"]
        assert sum(part["tokens"] for part in shown["earnings"]) == pytest.approx(earned)
        assert [part["node_id"] for part in shown["earnings"]] == [1, 2]
        assert shown["platform_fee"] == pytest.approx(charged - earned)


def test_a_job_cancelled_before_reporting_any_work_pays_the_minimum_charge(
    client: TestClient, settings: Settings, scripted_ray: ScriptedRay, lent_pair: tuple
) -> None:
    owner, user = lent_pair
    scripted_ray.idle_after = 0  # started, and nothing else yet
    response = client.post("/jobs/submit", headers=user.headers, json=ES_JOB)
    job_id = response.json()["id"]
    wait_for(
        lambda: client.get(f"/jobs/{job_id}", headers=user.headers).json()["status"] == "running",
        timeout_s=30,
        what="the job to run",
    )
    assert client.post(f"/jobs/{job_id}/cancel", headers=user.headers).status_code == 200
    done = wait_for(
        lambda: (
            (j := client.get(f"/jobs/{job_id}", headers=user.headers).json())["status"]
            == "cancelled"
            and j
        ),
        timeout_s=30,
        what="the cancel to land",
    )
    assert done["usage"] in ({}, None) or all(
        figures["cpu_core_seconds"] == 0 for figures in done["usage"].values()
    )
    balance = client.get("/tokens/balance/me", headers=user.headers).json()
    assert balance["spent"] == settings.min_job_charge
    earned = client.get("/tokens/balance/me", headers=owner.headers).json()["earned"]
    minimum = int(settings.min_job_charge * 1_000_000)
    fees = sum(platform_fee(part, rates_from(settings)) for part in (minimum // 2,) * 2)
    assert earned == tokens(minimum - fees)
    assert_money_shown(client, user.headers, owner.headers, job_id, charged=0.01)


def test_a_job_that_reaches_its_cap_stops_is_charged_the_cap_and_says_so(
    client: TestClient, settings: Settings, scripted_ray: ScriptedRay, lent_pair: tuple
) -> None:
    """The probe's job with a tiny max_tokens ran on and paid less than its work."""
    owner, user = lent_pair
    scripted_ray.idle_after = 5
    cap = 0.02
    assert charge_of(5, settings, owner.id, user.id) > cap * 1_000_000  # the work passes it
    done = run_until_done(client, user.headers, {**ES_JOB, "max_tokens": cap})
    assert done["status"] == "failed"
    assert done["status_reason"].startswith("stopped: its budget of 0.02 tokens is used up")
    assert "charged that budget" in done["status_reason"]
    balance = client.get("/tokens/balance/me", headers=user.headers).json()
    assert balance["spent"] == cap
    assert balance["held"] == 0
