"""A hypothesis state machine drives grants, submits, cancels, settlements, key retries and
concurrent duplicates; the ledger invariants are checked after every step, on each database."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from pydantic import ValidationError
from sqlalchemy import func, select

from auth.models import Role, User
from compute.billing.pending_credit import credit_saved_work
from compute.billing.service import estimate_cost, rates_from
from compute.billing.usage import JobUsage
from compute.jobs.service import cancel_job, submit_job, transition_job
from compute.jobs.spec import JobSpec
from compute.jobs.state import InvalidTransitionError, JobStatus
from compute.models import Job, Node
from compute.nodes.service import NodeApproval, set_node_approval
from core.db import get_engine, make_session_factory, session_scope
from core.errors import InsufficientFundsError
from ledger.flows import balance_summary, grant_tokens
from ledger.invariants import ledger_report
from ledger.models import MICRO, TransactionKind
from tests.conftest import clear_tables, make_settings
from tests.ledger_helpers import run_to_end, usage

T = TypeVar("T")


def spec(runtime_s: int, cores: float) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model_config": {"type": "classifier", "model_name": "mlp"},
            "data_config": {"data_source": "builtin", "dataset_name": "digits"},
            "requirements": {"gpu": 0, "cpu_cores": cores, "memory": 1},
            "max_runtime_s": runtime_s,
        }
    )


def at_once(count: int, call: Callable[[], T]) -> list[T]:
    """``call``'s answers on ``count`` threads released together. An exception raised on a
    thread is raised here, not lost (a bare ``threading.Thread`` only prints it)."""
    start = threading.Barrier(count)

    def released() -> T:
        start.wait(timeout=60)
        return call()

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(released) for _ in range(count)]
        return [future.result() for future in futures]


def make_machine(database_url: str) -> type[RuleBasedStateMachine]:
    config = make_settings(database_url)
    rates = rates_from(config)
    factory = make_session_factory(get_engine(database_url))

    class LedgerMachine(RuleBasedStateMachine):
        jobs = Bundle("jobs")
        keys = Bundle("keys")

        def __init__(self) -> None:
            super().__init__()
            clear_tables(database_url)
            self.granted = 0
            self.grant_count = 0
            with session_scope(factory) as session:
                users = [
                    User(username=f"u{i}", password_hash="-", role=Role.NODE_OWNER.value)
                    for i in range(3)
                ]
                session.add_all(users)
                session.flush()
                self.user_ids = [u.id for u in users]
                nodes = [
                    Node(
                        owner_id=u.id,
                        hostname=f"n{u.id}",
                        cpu_cores=4,
                        memory_gb=8,
                        approval="approved",
                        credential_hash=f"h{u.id}",
                    )
                    for u in users
                ]
                session.add_all(nodes)
                session.flush()
                self.node_ids = [n.id for n in nodes]

        def _owner(self, index: int) -> User:
            with session_scope(factory) as session:
                user = session.get(User, self.user_ids[index % 3])
                session.expunge(user)
                return user

        def _jobs_count(self) -> int:
            with session_scope(factory) as session:
                return session.scalar(select(func.count()).select_from(Job)) or 0

        @rule(user=st.integers(0, 2), amount=st.integers(1, 50 * MICRO))
        def grant(self, user: int, amount: int) -> None:
            self.grant_count += 1
            with session_scope(factory) as session:
                grant_tokens(
                    session,
                    user_id=self.user_ids[user],
                    amount=amount,
                    kind=TransactionKind.ADMIN_GRANT,
                    key=f"g{self.grant_count}",
                )
            self.granted += amount

        @rule(
            target=jobs,
            user=st.integers(0, 2),
            runtime=st.integers(60, 20 * 3600),
            cores=st.sampled_from([0.25, 1, 2]),
            key=st.none() | st.text("abc", min_size=1, max_size=3),
        )
        def submit(self, user: int, runtime: int, cores: float, key: str | None):
            before = self._jobs_count()
            owner = self._owner(user)
            try:
                with session_scope(factory) as session:
                    job, _ = submit_job(
                        session,
                        owner,
                        spec(runtime, cores),
                        idempotency_key=key,
                        default_max_runtime_s=3600,
                        rates=rates,
                    )
                    return job.id
            except InsufficientFundsError:
                assert self._jobs_count() == before  # a 402 stores nothing
                return -1
            except Exception as exc:  # a reused key with another body: 422, nothing stored
                assert "Idempotency-Key" in str(exc)
                assert self._jobs_count() == before
                return -1

        @rule(job=jobs, user=st.integers(0, 2))
        def retry_same_request(self, job: int, user: int) -> None:
            """Replaying a submit with the job's own key returns that job, holding nothing."""
            if job < 0:
                return
            with session_scope(factory) as session:
                stored = session.get(Job, job)
                key, owner_id, body = stored.idempotency_key, stored.owner_id, stored.spec
            if key is None:
                return
            before = self._jobs_count()
            owner = self._owner(self.user_ids.index(owner_id))
            with session_scope(factory) as session:
                again, created = submit_job(
                    session,
                    owner,
                    JobSpec.model_validate(body),
                    idempotency_key=key,
                    default_max_runtime_s=3600,
                    rates=rates,
                )
            assert again.id == job and not created
            assert self._jobs_count() == before

        @rule(job=consumes(jobs))
        def cancel(self, job: int) -> None:
            if job < 0:
                return
            with session_scope(factory) as session:
                owner = session.get(User, session.get(Job, job).owner_id)
                with contextlib.suppress(InvalidTransitionError):
                    cancel_job(session, owner, job, rates=rates)

        @rule(job=jobs, node=st.integers(0, 2), cpu_s=st.floats(0, 100_000))
        def checkpoint(self, job: int, node: int, cpu_s: float) -> None:
            """A checkpoint saves a node's work: its price moves into the pending credit."""
            if job < 0:
                return
            with session_scope(factory) as session:
                stored = session.get(Job, job, with_for_update=True)
                if JobStatus(stored.status).is_terminal():
                    return
                if stored.status == JobStatus.QUEUED:
                    transition_job(session, stored, JobStatus.SCHEDULED, "placed")
                    transition_job(session, stored, JobStatus.RUNNING, "running")
                saved = JobUsage.from_column(stored.usage)
                work = [usage(self.node_ids[node], 0, cpu_s, 0)]
                stored.usage = saved.plus(work).to_column()
                credit_saved_work(session, stored, rates, step=1)

        @rule(node=st.integers(0, 2), banned=st.booleans())
        def ban_or_approve(self, node: int, banned: bool) -> None:
            """A ban voids the node's pending credit back to the payers."""
            approval = NodeApproval.BANNED if banned else NodeApproval.APPROVED
            with session_scope(factory) as session:
                set_node_approval(session, self.node_ids[node], approval)
                if not banned:
                    session.get(Node, self.node_ids[node]).banned_at = None

        @rule(
            job=consumes(jobs),
            node=st.integers(0, 2),
            cpu_s=st.floats(0, 100_000),
            failed=st.booleans(),
        )
        def settle(self, job: int, node: int, cpu_s: float, failed: bool) -> None:
            if job < 0:
                return
            status = JobStatus.FAILED if failed else JobStatus.SUCCEEDED
            with factory() as session:
                try:
                    run_to_end(
                        session, config, job, [usage(self.node_ids[node], 0, cpu_s, 0)], status
                    )
                except InvalidTransitionError:
                    session.rollback()

        @rule(user=st.integers(0, 2))
        def concurrent_duplicates(self, user: int) -> None:
            """Three threads submit with one fresh key at once: one job and one hold when the
            wallet can pay it, else three 402s and nothing stored."""
            key = f"dup-{self.grant_count}-{self._jobs_count()}"
            owner = self._owner(user)
            request = spec(60, 0.25)
            hold = estimate_cost(
                request.requirements,
                runtime_s=60,
                cap=None,
                rates=rates,
                extra=request.extra_shares(),
            ).total
            before = self._jobs_count()
            with session_scope(factory) as session:
                wallet_before = balance_summary(session, owner.id)
            affordable = wallet_before.available >= hold

            def submit_once() -> int | InsufficientFundsError:
                try:
                    with session_scope(factory) as session:
                        job, _ = submit_job(
                            session,
                            owner,
                            request,
                            idempotency_key=key,
                            default_max_runtime_s=3600,
                            rates=rates,
                        )
                        return job.id
                except InsufficientFundsError as exc:
                    return exc

            answers = at_once(3, submit_once)
            with session_scope(factory) as session:
                wallet_after = balance_summary(session, owner.id)
            if affordable:
                assert len(set(answers)) == 1 and isinstance(answers[0], int), answers
                assert self._jobs_count() == before + 1
                assert wallet_after.held - wallet_before.held == hold  # held once
            else:
                assert all(isinstance(a, InsufficientFundsError) for a in answers), answers
                assert self._jobs_count() == before
                assert wallet_after == wallet_before

        @invariant()
        def books_balance(self) -> None:
            with session_scope(factory) as session:
                terminal = [s.value for s in JobStatus if s.is_terminal()]
                finished = set(session.scalars(select(Job.id).where(Job.status.in_(terminal))))
                report = ledger_report(session, terminal_job_ids=finished)
            assert report.invariant_ok, report.problems
            assert report.issued == self.granted
            assert (
                report.issued == report.in_wallets + report.in_escrow + report.pending + report.fees
            )

    return LedgerMachine


def test_ledger_state_machine(database_url: str) -> None:
    machine = make_machine(database_url)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    clear_tables(database_url)


def test_concurrent_duplicates_with_and_without_tokens(database_url: str) -> None:
    """The race rule on its own, both ways, whatever the state machine happens to draw."""
    machine = make_machine(database_url)()
    machine.grant(0, 50 * MICRO)
    machine.concurrent_duplicates(0)  # can pay: one job, one hold
    machine.concurrent_duplicates(1)  # no tokens: three 402s
    assert machine._jobs_count() == 1
    machine.books_balance()
    clear_tables(database_url)


def test_amount_conversions_are_exact() -> None:
    from ledger.pricing import tokens, tokens_to_micro

    for text in ["0.000001", "1", "12.345678", "999999999.999999"]:
        assert tokens_to_micro(Decimal(text)) == int(Decimal(text) * MICRO)
        assert str(Decimal(str(tokens(tokens_to_micro(Decimal(text)))))) in (text, text + ".0")
    assert tokens(1) == 0.000001 and tokens(MICRO) == 1 and tokens(12_345_678) == 12.345678
    for micro in [1, 11, 999_999, 12_345_678, 999_999_999_999_999]:
        assert tokens_to_micro(Decimal(str(tokens(micro)))) == micro  # there and back
    # A finer amount than a micro-token cannot enter.
    body = spec(60, 1).model_dump(by_alias=True)
    with pytest.raises(ValidationError, match="decimal places"):
        JobSpec.model_validate({**body, "max_tokens": "0.0000011"})
