"""The run contract on the node side: what a strategy may call while it runs
(``RunContext``) and how runners are named. What a runner is given (``RunConfig``,
``WorkerPlan``) is the protocol's (``protocol/run.py``)."""

from __future__ import annotations

from typing import Protocol

from protocol.events import Event

NAMESPACE = "distlm"  # the Ray namespace of every runner actor


def runner_name(job_id: int) -> str:
    """The runner actor's name: how its driver's calls and its workers find it."""
    return f"distlm-job-{job_id}"


class RunContext(Protocol):
    """What a strategy's run may do with its runner: report events and honour cancels."""

    def emit(self, event: Event) -> int: ...

    def check_cancelled(self) -> None:
        """Raise ``RunCancelledError`` when the job was asked to stop."""
