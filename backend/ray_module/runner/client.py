"""The driver side of runners: launch one, fetch its new events, stop it. A node's driver
(``agent.driver``) and the engine's own tests use them; the runner is owned by the process
that launched it, and dies with it."""

from __future__ import annotations

from typing import Any

from protocol.events import RecordedEvent
from protocol.run import RunConfig
from ray_module.contract import NAMESPACE, runner_name
from ray_module.runner.job_runner import JobRunner

# The runners this process launched: an actor that is not detached lives while a handle to
# it does, so the launcher keeps one until it stops the runner.
_launched: dict[int, Any] = {}


def launch_runner(config: RunConfig) -> None:
    """Start the job's runner actor, pinned to this driver's node; it lives until
    ``stop_runner`` or the end of this process."""
    import ray

    handle = runner_actor(config)
    _launched[config.job_id] = handle
    ray.get(handle.start.remote(), timeout=60)


def runner_actor(config: RunConfig) -> Any:
    """The job's runner actor on this driver's node; it and its actors die with the
    driver's process.

    Hard affinity: with a soft one Ray may place the runner on a worker node (seen on a
    multi-node cluster), and the job's server would then die with that node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return (
        ray.remote(JobRunner)
        .options(
            name=runner_name(config.job_id),
            namespace=NAMESPACE,
            num_cpus=0,
            max_concurrency=16,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
        )
        .remote(config)
    )


def _handle(job_id: int) -> Any | None:
    import ray

    try:
        return ray.get_actor(runner_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return None


def fetch_events(job_id: int, after: int, timeout_s: float = 10) -> list[RecordedEvent] | None:
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


def cancel_runner(job_id: int) -> None:
    """Ask the runner to stop at its next check (it reports CANCELLED); it stays alive."""
    handle = _handle(job_id)
    if handle is not None:
        handle.cancel.remote()


def stop_runner(job_id: int) -> None:
    """Kill the runner; the training actors it owns die with it and free their resources."""
    import ray

    handle = _launched.pop(job_id, None) or _handle(job_id)
    if handle is not None:
        ray.kill(handle, no_restart=True)
