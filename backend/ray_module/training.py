"""The JobRunner: one detached, named Ray actor per job that runs the job's strategy and
buffers its events until the gateway's dispatcher collects them.

``JobRunner`` is a plain class (unit-testable without Ray); ``JobRunnerActor`` wraps it at
the edge. The functions below are the dispatcher's whole interface to runners.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from ray_module import events

log = logging.getLogger(__name__)

NAMESPACE = "distlm"


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of the job, pinned to one node."""

    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float


@dataclass(frozen=True)
class RunConfig:
    job_id: int
    strategy: str
    model: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    workers: tuple[WorkerPlan, ...]
    storage_path: str
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def job_dir(self) -> str:
        return f"{self.storage_path}/jobs/{self.job_id}"


class RunCancelledError(Exception):
    """The run was asked to stop."""


class JobRunner:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._state = "created"

    def start(self) -> str:
        """Start the strategy in a background thread (idempotent); return the state."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
        return self._state

    def _run(self) -> None:
        from ray_module.strategies import get_strategy

        self._state = "running"
        self.emit(events.status("running", f"attempt {self.config.attempt} started"))
        try:
            get_strategy(self.config.strategy)(self.config, self)
        except RunCancelledError:
            self._state = "cancelled"
            self.emit(events.status("cancelled", "stopped on request"))
            return
        except Exception as exc:  # a failed run is data for the dispatcher, not a crash
            self._state = "failed"
            retryable = is_retryable(exc)
            log.warning("job %s failed: %s", self.config.job_id, traceback.format_exc())
            self.emit(events.status("failed", describe(exc), retryable=retryable))
            return
        self._state = "succeeded"
        self.emit(events.status("succeeded", "training finished"))

    def emit(self, event: dict[str, Any]) -> int:
        """Buffer one event (workers call this through the actor handle)."""
        with self._lock:
            record = {**event, "seq": len(self._events) + 1, "at": time.time()}
            self._events.append(record)
            return record["seq"]

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return self._events[after:]

    def state(self) -> str:
        return self._state

    def cancel(self) -> None:
        self._cancelled.set()

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise RunCancelledError()


def describe(exc: BaseException) -> str:
    """A one-line reason for users, without a traceback."""
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    return f"{type(root).__name__}: {text}"[:500]


# Errors that retrying cannot fix (bad data, model or settings), by name: Ray re-raises
# worker errors as its own types with the original's name in the text.
NOT_RETRYABLE = (
    "DataError",
    "ModelError",
    "PartitionError",
    "StartupError",
    "NotImplementedError",
    "ValueError",
    "TypeError",
)


def is_retryable(exc: BaseException) -> bool:
    """Lost workers and nodes are worth a retry; bad models, data or configs are not.

    Ray Train re-raises worker errors as its own type with the original in the message, so
    the names are looked for in the text as well as in the exception chain.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    if "ActorDiedError" in text or "NodeDiedError" in text or "died" in text.lower():
        return True
    if any(isinstance(e, ValueError | TypeError | NotImplementedError) for e in chain):
        return False
    return not (names.intersection(NOT_RETRYABLE) or any(n in text for n in NOT_RETRYABLE))


def runner_name(job_id: int) -> str:
    return f"distlm-job-{job_id}"


def launch_runner(config: RunConfig) -> None:
    """Start (or find) the job's detached runner actor, pinned to this driver's node.

    Hard affinity: with a soft one Ray may place the runner on a worker node (seen on a
    multi-node cluster), and the job's server would then die with that node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_class = ray.remote(JobRunner)
    handle = actor_class.options(
        name=runner_name(config.job_id),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=16,
        max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote(config)
    ray.get(handle.start.remote(), timeout=60)


def _handle(job_id: int) -> Any | None:
    import ray

    try:
        return ray.get_actor(runner_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return None


def fetch_events(job_id: int, after: int, timeout_s: float = 10) -> list[dict[str, Any]] | None:
    """New events of the job's runner; None when the runner is gone (died or never ran)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    handle = _handle(job_id)
    if handle is None:
        return None
    try:
        return ray.get(handle.events.remote(after), timeout=timeout_s)
    except RayActorError:
        return None
    except GetTimeoutError:
        return []


def stop_runner(job_id: int) -> None:
    """Kill the runner; the training actors it owns die with it and free their resources."""
    import ray

    handle = _handle(job_id)
    if handle is not None:
        ray.kill(handle, no_restart=True)
