"""Settlement: metered charge capped by the hold, node owners credited less the fee, the rest
refunded, exactly once."""

from __future__ import annotations

from functools import partial

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from compute.billing.service import rates_from
from compute.billing.usage import JobUsage
from compute.jobs.state import JobStatus
from core.db import make_session_factory
from core.errors import InvalidInputError
from ledger.models import LedgerEntry
from ledger.pricing import ResourceSeconds
from ledger.settlement import NodeUsage, settle_job
from tests.conftest import Account, register_node, submit_job
from tests.ledger_helpers import run_to_end, usage


def balance(client: TestClient, account: Account) -> dict:
    return client.get("/tokens/balance/me", headers=account.headers).json()


def ledger(client: TestClient, admin: Account) -> dict:
    return client.get("/metrics/system", headers=admin.headers).json()["ledger"]


@pytest.fixture
def session(client: TestClient):
    factory = make_session_factory(client.app.state.engine)  # type: ignore[attr-defined]
    with factory() as session:
        yield session


def test_usage_is_charged_credited_less_fee_and_the_rest_refunded(
    client: TestClient,
    session,
    settings,
    user: Account,
    node_owner: Account,
    admin: Account,
) -> None:
    node = register_node(client, node_owner.headers)
    job = submit_job(client, user.headers)  # holds 15.6
    # A tenth of an hour of 1 GPU, 4 cores and 16 GB: 1.0 + 0.4 + 0.16 = 1.56 tokens.
    result = run_to_end(session, settings, job["id"], [usage(node["id"], 360, 1440, 5760)])
    assert (result.charged, result.fees, result.refunded) == (1_560_000, 78_000, 14_040_000)
    assert result.credits == {node["id"]: 1_482_000}

    assert balance(client, user) == {
        "user_id": user.id,
        "available": 98.44,
        "held": 0.0,
        "earned": 0.0,
        "spent": 1.56,
        "pending": 0.0,
    }
    owner = balance(client, node_owner)
    assert owner["available"] == pytest.approx(101.482) and owner["earned"] == 1.482
    totals = ledger(client, admin)
    assert totals["fees"] == 0.078 and totals["in_escrow"] == 0 and totals["invariant_ok"]
    assert totals["issued"] == pytest.approx(totals["in_wallets"] + totals["fees"])
    assert client.get(f"/jobs/{job['id']}", headers=user.headers).json()["status"] == "succeeded"


def test_settling_twice_changes_nothing(
    client: TestClient,
    session,
    settings,
    user: Account,
    node_owner: Account,
) -> None:
    node = register_node(client, node_owner.headers)
    job = submit_job(client, user.headers)
    first = run_to_end(session, settings, job["id"], [usage(node["id"], 360, 1440, 5760)])
    entries_before = session.scalar(select(func.count()).select_from(LedgerEntry))
    session.commit()  # end the read transaction: SQLite transactions hold the write lock
    before = (balance(client, user), balance(client, node_owner))

    from compute.billing.service import rates_from, settle
    from compute.models import Job

    again = settle(
        session,
        session.get(Job, job["id"]),
        JobUsage().plus([usage(node["id"], 9999, 9999, 9999)]),
        rates_from(settings),
    )
    session.commit()
    assert again.first_time is False
    assert (again.charged, again.refunded, again.fees, again.credits) == (
        first.charged,
        first.refunded,
        first.fees,
        first.credits,
    )
    assert session.scalar(select(func.count()).select_from(LedgerEntry)) == entries_before
    session.commit()
    assert (balance(client, user), balance(client, node_owner)) == before


def test_usage_larger_than_the_hold_is_capped(
    client: TestClient,
    session,
    settings,
    user: Account,
    node_owner: Account,
    admin: Account,
) -> None:
    node = register_node(client, node_owner.headers)
    job = submit_job(client, user.headers, max_tokens=2)
    result = run_to_end(
        session, settings, job["id"], [usage(node["id"], 36000, 0, 0)]
    )  # 100 tokens
    assert result.charged == 2_000_000 and result.refunded == 0
    assert balance(client, user)["available"] == 98.0
    assert balance(client, node_owner)["earned"] == 1.9
    assert ledger(client, admin)["invariant_ok"]


def test_cap_is_shared_across_nodes_in_proportion(
    client: TestClient,
    session,
    settings,
    user: Account,
    node_owner: Account,
    other_node_owner: Account,
) -> None:
    a = register_node(client, node_owner.headers, "a")
    b = register_node(client, other_node_owner.headers, "b")
    job = submit_job(client, user.headers, max_tokens=3)
    # a: 3 tokens of GPU time, b: 1 token; total 4 > hold 3, so each gets 3/4 of its cost.
    result = run_to_end(session, settings, job["id"], [usage(a["id"], 1080), usage(b["id"], 360)])
    assert result.charged == 3_000_000
    assert result.credits == {
        a["id"]: 2_250_000 - 112_500,
        b["id"]: 750_000 - 37_500,
    }


def test_owner_running_their_own_job_is_not_paid_by_themselves(
    client: TestClient,
    session,
    settings,
    node_owner: Account,
    admin: Account,
) -> None:
    node = register_node(client, node_owner.headers)
    job = submit_job(client, node_owner.headers)
    result = run_to_end(session, settings, job["id"], [usage(node["id"], 360, 1440, 5760)])
    assert result.charged == 0 and result.credits == {} and result.fees == 0
    assert balance(client, node_owner) == {
        "user_id": node_owner.id,
        "available": 100.0,
        "held": 0.0,
        "earned": 0.0,
        "spent": 0.0,
        "pending": 0.0,
    }
    assert ledger(client, admin)["invariant_ok"]


def test_failure_before_anything_ran_refunds_everything(
    client: TestClient,
    session,
    settings,
    user: Account,
) -> None:
    job = submit_job(client, user.headers)
    result = run_to_end(session, settings, job["id"], [], status=JobStatus.FAILED)
    assert result.charged == 0 and result.refunded == 15_600_000
    assert balance(client, user)["available"] == 100.0


def test_a_job_that_held_nothing_settles_once_with_no_entries(
    client: TestClient, session, settings, user: Account, node_owner: Account
) -> None:
    """An audit job holds nothing (the platform's own check): its settlement is a
    transaction with no entries, made once; a second one with other usage changes nothing."""
    node = register_node(client, node_owner.headers)
    rates, nothing_held = rates_from(settings), 4242
    settle = partial(settle_job, session, job_id=nothing_held, job_owner_id=user.id, rates=rates)
    first = settle(usage=[])
    work = ResourceSeconds(cpu_core_seconds=60)
    again = settle(usage=[NodeUsage(node["id"], node_owner.id, work)])
    session.commit()
    assert first.first_time and not again.first_time
    assert (again.charged, again.refunded, again.credits) == (0, 0, {})
    assert balance(client, node_owner)["earned"] == 0.0


def test_usage_on_an_unknown_node_is_refused_and_nothing_settles(
    client: TestClient,
    session,
    settings,
    user: Account,
) -> None:
    job = submit_job(client, user.headers)
    with pytest.raises(InvalidInputError):
        run_to_end(session, settings, job["id"], [usage(987654, 10)])
    session.rollback()
    assert balance(client, user)["held"] == 15.6
    assert client.get(f"/jobs/{job['id']}", headers=user.headers).json()["status"] == "queued"


def test_negative_usage_is_refused() -> None:
    with pytest.raises(ValueError):
        JobUsage().plus([usage(1, gpu_s=-1)])
    with pytest.raises(ValueError):
        JobUsage().plus([usage(1, cpu_s=float("nan"))])


def test_metered_cost_counts_other_owners_nodes_only(
    client: TestClient,
    session,
    settings,
    user: Account,
    node_owner: Account,
) -> None:
    from compute.billing.service import charged_nodes, job_estimate, node_owners, rates_from
    from compute.models import Job

    theirs = register_node(client, node_owner.headers, "theirs")
    second = register_node(client, node_owner.headers, "second")
    job_id = submit_job(client, user.headers, max_tokens=1)["id"]
    own_job_id = submit_job(client, node_owner.headers)["id"]
    # API calls first: a SQLite session holds the write lock until it commits.
    job, own_job = session.get(Job, job_id), session.get(Job, own_job_id)
    rates = rates_from(settings)
    half_hour = {"gpu_seconds": 0.0, "cpu_core_seconds": 1800.0, "memory_gb_seconds": 0.0}
    used = JobUsage.from_column({str(theirs["id"]): half_hour, str(second["id"]): half_hour})
    job.usage = own_job.usage = used.to_column()  # the work both jobs did, as saved
    owners = node_owners(session, [job, own_job])
    assert used.metered(charged_nodes(owners, job), rates) == 1_000_000  # 0.5 + 0.5 token
    assert job_estimate(job, rates).total == 1_000_000  # the budget the dispatcher enforces
    assert used.metered(charged_nodes(owners, own_job), rates) == 0  # own nodes are free
    session.commit()


def test_a_run_on_others_nodes_is_never_free(
    client: TestClient, session, settings, user: Account, node_owner: Account
) -> None:
    """Issue 11 (4): near-zero requirements priced at nothing still pay the minimum
    (DISTLM_MIN_JOB_CHARGE, 0.01 token), credited to the node that did the work."""
    node = register_node(client, node_owner.headers)
    job = submit_job(client, user.headers)
    result = run_to_end(session, settings, job["id"], [usage(node["id"], cpu_s=0.0001)])
    assert result.charged == 10_000  # 0.01 token, not the 0.00000003 the usage priced at
    assert result.credits == {node["id"]: 10_000 - result.fees}
    assert result.charged + result.refunded == result.held


def test_usage_over_the_hold_on_several_nodes_charges_exactly_the_hold() -> None:
    """Scaling each node's cost down to the hold rounds; the remainder still goes to a node,
    so the job pays (and owners earn on) exactly its hold, not a micro-token less."""
    from decimal import Decimal

    from ledger.pricing import Rates, ResourceSeconds
    from ledger.settlement import NodeUsage, node_charges

    rates = Rates(Decimal(10), Decimal(1), Decimal("0.1"), Decimal(5))
    hour = ResourceSeconds(cpu_core_seconds=3600.0)  # 1 token = 1,000,000 micro each
    usage = [NodeUsage(node, owner_id=node + 10, usage=hour) for node in (1, 2, 3)]
    charges = node_charges(usage, job_owner_id=99, held=1_000_000, rates=rates)
    assert sum(charges.values()) == 1_000_000
    assert sorted(charges.values()) == [333_333, 333_333, 333_334]


def test_a_first_settlement_answers_what_its_entries_say(
    client: TestClient,
    session,
    settings,
    user: Account,
    node_owner: Account,
    other_node_owner: Account,
) -> None:
    """The first settlement builds its answer from what it posted (no read back); a second
    call reads it from the entries. Both must agree: a node released, one refused, one
    whose credit stays pending for an audit."""
    from compute.billing.service import rates_from

    released = register_node(client, node_owner.headers, "released")["id"]
    refused = register_node(client, other_node_owner.headers, "refused")["id"]
    held = register_node(client, other_node_owner.headers, "held")["id"]
    job_id = submit_job(client, user.headers)["id"]
    owners = {released: node_owner.id, refused: other_node_owner.id, held: other_node_owner.id}
    hour = ResourceSeconds(cpu_core_seconds=1800.0)
    settle = partial(
        settle_job,
        session,
        job_id=job_id,
        job_owner_id=user.id,
        usage=[NodeUsage(node, owner, hour) for node, owner in owners.items()],
        rates=rates_from(settings),
        refused_nodes={refused},
        held_nodes={held},
    )
    first = settle()
    session.commit()
    again = settle()
    session.commit()
    assert first.first_time and not again.first_time
    assert first.voided > 0 and first.refunded > 0 and list(first.credits) == [released]
    assert first.held == first.charged + first.voided + first.refunded
    fields = ("held", "charged", "refunded", "fees", "credits", "voided", "transaction_id")
    assert {f: getattr(first, f) for f in fields} == {f: getattr(again, f) for f in fields}
