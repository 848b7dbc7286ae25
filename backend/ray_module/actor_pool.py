"""What the federated and ES servers share about their worker actors: which are alive and
free, credit for completed work, collecting answers under a deadline, and start-up errors.

A member whose answer missed the deadline is not interrupted (Ray cannot preempt a running
method safely): it stays busy, and unavailable, until its late answer arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ray_module import events
from ray_module.training import NOT_RETRYABLE

WAIT_SLICE_S = 0.25  # how often a waiting server looks for a cancel request
# Errors that retrying cannot fix (bad data, model or settings): they fail the job at once.
DETERMINISTIC_ERRORS = NOT_RETRYABLE

M = TypeVar("M", bound="PoolMember")


class SharedWeights:
    """Weights in Ray's object store, put once: the new model that a server validates is the
    one its next round or step sends out, without a second ``ray.put``."""

    def __init__(self) -> None:
        self._last: tuple[Any, Any] | None = None  # (the value, its object ref)

    def ref(self, value: Any) -> Any:
        import ray

        if self._last is None or self._last[0] is not value:
            self._last = (value, ray.put(value))
        return self._last[1]


@dataclass(frozen=True)
class Credit:
    """Completed, accepted work of one member: its slot's resources for ``seconds``."""

    node_id: int
    seconds: float
    gpu: int
    cpu_cores: float
    memory_gb: float

    def usage_event(self) -> dict[str, Any]:
        return events.usage(
            self.node_id,
            gpu_seconds=self.gpu * self.seconds,
            cpu_core_seconds=self.cpu_cores * self.seconds,
            memory_gb_seconds=self.memory_gb * self.seconds,
        )


@dataclass(eq=False)  # identity: members are dict keys
class PoolMember:
    handle: Any
    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    alive: bool = True
    late: list[Any] = field(default_factory=list)  # refs of answers that missed a deadline

    def is_available(self) -> bool:
        import ray

        if self.late:
            _, self.late = ray.wait(self.late, num_returns=len(self.late), timeout=0)
        return self.alive and not self.late

    def credit(self, seconds: float) -> Credit:
        return Credit(self.node_id, seconds, self.gpu, self.cpu_cores, self.memory_gb)


@dataclass
class Gathered:
    answers: list[tuple[Any, Any]]  # (key, answer)
    dead: list[Any]  # keys whose actor died
    errors: list[tuple[Any, str]]  # keys whose call raised, with the error's text
    late: list[Any]  # keys that missed the deadline


def gather(
    pending: dict[Any, tuple[Any, PoolMember]],
    timeout_s: float,
    check_cancelled: Callable[[], None],
) -> Gathered:
    """Wait for ``{ref: (key, member)}`` until all answered or ``timeout_s`` passed."""
    import ray

    deadline = time.monotonic() + timeout_s
    finished: list[Any] = []
    while len(finished) < len(pending):
        check_cancelled()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        waiting = [ref for ref in pending if ref not in finished]
        done, _ = ray.wait(waiting, num_returns=1, timeout=min(WAIT_SLICE_S, remaining))
        finished.extend(done)
    result = Gathered([], [], [], [])
    for ref in finished:
        key, member = pending[ref]
        try:
            result.answers.append((key, ray.get(ref)))
        except ray.exceptions.RayActorError:
            member.alive = False  # the actor, or its node, is gone
            result.dead.append(key)
        except ray.exceptions.RayTaskError as error:
            result.errors.append((key, str(error)))
        except ray.exceptions.RayError:
            # The answer was lost with its node (ObjectLostError, OwnerDiedError, ...).
            member.alive = False
            result.dead.append(key)
    for ref, (key, member) in pending.items():
        if ref not in finished:
            member.late.append(ref)
            result.late.append(key)
    return result


def wait_for_free(
    members: list[M],
    needed: int,
    *,
    unit: str,
    error: type[Exception],
    timeout_s: float,
    check_cancelled: Callable[[], None],
    size: Callable[[M], int] = lambda member: 1,
) -> list[M]:
    """The free members, once they count ``needed`` (members, or what ``size`` counts in
    them). Raises ``error`` at once when the live ones cannot, or when busy ones have not
    come free by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        check_cancelled()
        free = [m for m in members if m.is_available()]
        alive = sum(size(m) for m in members if m.alive)
        if alive < needed:
            raise error(f"only {alive} {unit} are alive; {needed} are needed")
        if sum(size(m) for m in free) >= needed:
            return free
        if time.monotonic() > deadline:
            raise error(
                f"only {sum(size(m) for m in free)} {unit} are free after {timeout_s:g} s; "
                f"{needed} are needed"
            )
        time.sleep(WAIT_SLICE_S)


def ask_available(
    members: list[PoolMember],
    call: Callable[[PoolMember], Any],
    *,
    everyone: bool,
    timeout_s: float,
    check_cancelled: Callable[[], None],
) -> list[tuple[PoolMember, Any]]:
    """``call`` on every free member, or on free members one at a time until one answers,
    under a deadline and with cancel checks; a member that misses it is marked busy like a
    straggler, one that dies is marked dead."""
    remaining = [m for m in members if m.is_available()]
    answers: list[tuple[PoolMember, Any]] = []
    while remaining and not (answers and not everyone):
        chosen, remaining = (remaining, []) if everyone else (remaining[:1], remaining[1:])
        pending = {call(member): (member, member) for member in chosen}
        answers.extend(gather(pending, timeout_s, check_cancelled).answers)
    return answers


def first_alive(
    members: list[PoolMember], call: Callable[[PoolMember], Any], timeout_s: float = 600
) -> Any:
    """``ray.get(call(member))`` on the first live member that answers within ``timeout_s``."""
    import ray

    for member in members:
        if not member.alive:
            continue
        try:
            return ray.get(call(member), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            continue
        except ray.exceptions.RayActorError:
            member.alive = False
    raise NoLiveMembersError("no worker actor is alive to do this")


class NoLiveMembersError(RuntimeError):
    """Every worker actor is gone (retryable: the job resumes on live nodes)."""


class StartupError(ValueError):
    """A worker actor could not start because of the job's data, model or settings."""


def startup_error(error: Exception) -> StartupError | None:
    """The deterministic cause (``DataError: ...``) in a Ray actor-creation traceback, or
    None when the actor died of something a retry may cure (a lost node)."""
    text = str(error)
    for cause in DETERMINISTIC_ERRORS:
        for line in reversed(text.splitlines()):
            stripped = line.strip()
            if f"{cause}:" in stripped:
                return StartupError(stripped[stripped.find(cause) :][:500])
    return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else text[:300]
