"""How a job's strategies start their actors: on the node's warm workers where it keeps
some (``ray_module.warm.pool``), otherwise as fresh Ray actors; the same object and calls
either way.

A warm worker is a ``WarmWorker`` actor that became the strategy's object: its handle here
is a ``WarmHandle``, whose ``handle.method.remote(...)`` is ``worker.call.remote("method",
...)`` (one caller's calls keep their order, as on any actor). Only CPU slots take warm
workers: a GPU actor needs Ray to assign it its GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from protocol.nodes import node_resource
from ray_module.contract import NAMESPACE
from ray_module.warm.pool import keeper_name, process_start

TAKE_TIMEOUT_S = 10.0  # a keeper that does not answer: the job starts fresh actors


@dataclass(frozen=True)
class Slot:
    """Where one actor runs and what it reserved."""

    node_id: int
    cpu_cores: float
    gpu: int = 0


class WarmHandle:
    """A warm worker serving as one of the job's actors; used like that actor's handle."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def __getattr__(self, method: str) -> _WarmMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _WarmMethod(self.worker, method)


class _WarmMethod:
    def __init__(self, worker: Any, method: str) -> None:
        self.worker = worker
        self.method = method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.worker.call.remote(self.method, *args, **kwargs)


def start_actors(
    cls: type,
    slots: Sequence[Slot],
    args: Sequence[tuple],
    *,
    names: Sequence[str | None] | None = None,
) -> list[Any]:
    """One actor of ``cls`` per slot, built from its ``args``: warm where its node keeps
    warm workers, fresh otherwise (named ``names[i]`` in Ray's records, where given; a warm
    worker has no name, and Ray's records call it WarmWorker)."""
    import ray

    actor = ray.remote(cls)
    handles = []
    names = names or [None] * len(slots)
    for slot, built_from, worker, name in zip(slots, args, take_warm(slots), names, strict=True):
        if worker is not None:
            worker.become.remote(cls, slot.cpu_cores, built_from, {}, os.getpid())
            handles.append(WarmHandle(worker))
            continue
        handles.append(
            actor.options(
                num_cpus=slot.cpu_cores,
                num_gpus=slot.gpu,
                resources={node_resource(slot.node_id): 0.001},
                max_restarts=0,
                **({"name": name, "namespace": NAMESPACE} if name else {}),
            ).remote(*built_from)
        )
    return handles


def take_warm(slots: Sequence[Slot]) -> list[Any | None]:
    """For each slot, a warm worker of its node's keeper, or None (a GPU slot; a node that
    keeps none, as a job's own cluster; a node of a trusted pool on another machine than
    this runner, whose keeper refuses it). Each node's keeper is asked once."""
    import ray

    wanted: dict[int, int] = {}
    for slot in slots:
        if slot.gpu == 0:
            wanted[slot.node_id] = wanted.get(slot.node_id, 0) + 1
    me, started = os.getpid(), process_start(os.getpid())
    given: dict[int, list[Any]] = {}
    for node_id, count in wanted.items():
        try:
            keeper = ray.get_actor(keeper_name(node_id), namespace=NAMESPACE)
            taken = keeper.take.remote(count, node_id, me, started)
            given[node_id] = ray.get(taken, timeout=TAKE_TIMEOUT_S)
        except (ValueError, ray.exceptions.RayError):  # no keeper there, or gone, or stuck
            given[node_id] = []  # fresh actors
    return [
        given[slot.node_id].pop(0) if slot.gpu == 0 and given[slot.node_id] else None
        for slot in slots
    ]


def kill_actor(handle: Any) -> None:
    """Kill an actor started by ``start_actors``, warm or fresh."""
    import ray

    ray.kill(handle.worker if isinstance(handle, WarmHandle) else handle, no_restart=True)
