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

from protocol.events import UsageEvent
from protocol.trust import check_rate_for
from ray_module.errors import LostWorkersError, describe, is_retryable
from ray_module.warm.claim import kill_actor

WAIT_SLICE_S = 0.25  # how often a waiting server looks for a cancel request

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

    def usage_event(self, step: int) -> UsageEvent:
        """The work as usage of ``step`` (paid once a checkpoint covers that step)."""
        return UsageEvent.for_slot(
            self.node_id,
            gpu=self.gpu,
            cpu_cores=self.cpu_cores,
            memory_gb=self.memory_gb,
            seconds=self.seconds,
            step=step,
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
    # Verified credit: whose node it is, and its node's run of valid results (counted on
    # within the job), from which how often its work is replayed elsewhere.
    owner_id: int = 0
    valid_streak: int = 0

    @property
    def check_rate(self) -> float:
        return check_rate_for(self.valid_streak)

    def count_result(self, valid: bool) -> None:
        """A checked result, counted as the gateway counts it: checked less often as its
        results hold, at every step again after one that did not."""
        self.valid_streak = self.valid_streak + 1 if valid else 0

    def stop(self) -> None:
        """Its work was found invalid: it takes no further part (nor pay) in the job."""
        if self.alive:
            self.alive = False
            kill_actor(self.handle)

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
    errors: list[tuple[Any, Exception]]  # keys whose call raised, with the error
    late: list[Any]  # keys that missed the deadline
    # Seconds from the start of the gather to each answer's arrival, as the caller's clock
    # saw them: how long a member took, which no member can report shorter than it was.
    arrived_s: dict[Any, float] = field(default_factory=dict)

    def final_errors(self) -> list[tuple[Any, Exception]]:
        """Errors a retry cannot cure (the job's data, model or settings)."""
        return [(key, error) for key, error in self.errors if not is_retryable(error)]


def gather(
    pending: dict[Any, tuple[Any, PoolMember]],
    timeout_s: float,
    check_cancelled: Callable[[], None],
) -> Gathered:
    """Wait for ``{ref: (key, member)}`` until all answered or ``timeout_s`` passed."""
    import ray

    started = time.monotonic()
    deadline = started + timeout_s
    finished: list[Any] = []
    arrived_s: dict[Any, float] = {}
    while len(finished) < len(pending):
        check_cancelled()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        waiting = [ref for ref in pending if ref not in finished]
        done, _ = ray.wait(waiting, num_returns=1, timeout=min(WAIT_SLICE_S, remaining))
        finished.extend(done)
        for ref in done:
            arrived_s[pending[ref][0]] = time.monotonic() - started
    result = Gathered([], [], [], [], arrived_s)
    for ref in finished:
        key, member = pending[ref]
        try:
            result.answers.append((key, ray.get(ref)))
        except ray.exceptions.RayActorError:
            member.alive = False  # the actor, or its node, is gone
            result.dead.append(key)
        except ray.exceptions.RayTaskError as error:
            result.errors.append((key, error))
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


class NoLiveMembersError(LostWorkersError):
    """Every worker actor is gone (retryable: the job resumes on live nodes)."""


def raise_startup_failure(error: Exception, where: str) -> None:
    """A member failed to start: its own error (raised typed by its first call, see
    ``DeferredStart``) decides; an actor lost with its node is retryable."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        raise error
    raise NoLiveMembersError(f"{where} died while starting") from error


class DeferredStart:
    """Mixin for worker actors: an actor whose ``__init__`` raises dies with its error as
    text only (Ray's ActorDiedError keeps no cause object), so the loading runs in
    ``start`` and its error, typed, is raised by ``check_started`` on the first call."""

    startup_error: Exception | None = None

    def start_or_remember(self, start: Callable[[], None]) -> None:
        try:
            start()
        except Exception as error:  # raised again, typed, by check_started
            self.startup_error = error

    def check_started(self) -> None:
        if self.startup_error is not None:
            raise self.startup_error


def error_line(error: Exception) -> str:
    return describe(error)[:300]
