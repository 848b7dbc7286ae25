"""The trainer's side of the pipeline: ask loaders for batches in order, round-robin, never
more than ``max_in_flight`` asked and not yet consumed (the backpressure bound: a fast data
stage waits, a slow one is waited for), and hand them over in order, so an epoch's batches
arrive exactly once whatever the speeds.

``Flow`` keeps the figures that say what limits the run: samples/s, the fraction of time the
trainer waited for data, batches in flight, the loaders' CPU use."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ray_module.errors import LostWorkersError

BATCH_TIMEOUT_S = 600  # a loader that produces nothing for this long is lost


@dataclass
class Flow:
    """Figures since the last ``take``: the trainer's busy and waiting time, what loaders
    spent, the most batches in flight, and loader CPU-seconds per node (for credit)."""

    loader_cores: float
    samples: int = 0
    wait_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    max_in_flight: int = 0
    max_in_flight_bytes: int = 0
    loader_cpu_s: float = 0.0
    credit_cpu_s: dict[int, float] = field(default_factory=dict)
    credit_wall_s: dict[int, float] = field(default_factory=dict)

    def take(self) -> dict[str, float]:
        """The interval's figures; starts the next interval."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        figures = {
            "samples_per_s": self.samples / elapsed,
            "data_wait_fraction": min(1.0, self.wait_s / elapsed),
            "batches_in_flight": float(self.max_in_flight),
            "in_flight_mb": self.max_in_flight_bytes / 2**20,
            "loader_cpu_utilisation": min(
                1.0, self.loader_cpu_s / (elapsed * max(self.loader_cores, 1e-9))
            ),
        }
        self.samples, self.wait_s, self.loader_cpu_s = 0, 0.0, 0.0
        self.max_in_flight = self.max_in_flight_bytes = 0
        self.started = time.perf_counter()
        return figures

    def take_credit(self) -> tuple[dict[int, float], dict[int, float]]:
        """Loader CPU-seconds and wall seconds per node of the batches consumed since the
        last call: the data work to credit at a checkpoint."""
        cpu, wall = self.credit_cpu_s, self.credit_wall_s
        self.credit_cpu_s, self.credit_wall_s = {}, {}
        return cpu, wall


class BatchStream:
    """Yields ``(key, batch)`` for ``keys`` in order. ``ask(loader, key)`` returns an
    ObjectRef of the batch; ``fetch`` (``ray.get``) and ``ready`` (``ray.wait``) are injected
    so a test can drive the stream without a cluster."""

    def __init__(
        self,
        loaders: Sequence[Any],
        ask: Callable[[Any, Any], Any],
        *,
        max_in_flight: int,
        prefetch: int,
        flow: Flow,
        fetch: Callable[[Any], dict] | None = None,
    ) -> None:
        if not loaders:
            raise LostWorkersError("the data stage has no loaders")
        self.loaders = list(loaders)
        self.ask = ask
        self.max_in_flight = max_in_flight
        self.prefetch = prefetch
        self.flow = flow
        self.fetch = fetch or _ray_get

    def __call__(self, keys: Iterable[Any]) -> Iterator[tuple[Any, dict]]:
        # Each pending entry: [key, ref, the prefetching future or None].
        pending: deque[list[Any]] = deque()
        upcoming = iter(keys)
        turn = 0
        exhausted = False
        with ThreadPoolExecutor(max_workers=max(1, self.prefetch)) as pool:
            try:
                while True:
                    while not exhausted and len(pending) < self.max_in_flight:
                        key = next(upcoming, None)
                        if key is None:
                            exhausted = True
                            break
                        loader = self.loaders[turn % len(self.loaders)]
                        pending.append([key, self.ask(loader, key), None])
                        turn += 1
                    if not pending:
                        return
                    self.flow.max_in_flight = max(self.flow.max_in_flight, len(pending))
                    # The next batches are pulled to this node while the current one trains.
                    for entry in list(pending)[: self.prefetch]:
                        if entry[2] is None:
                            entry[2] = pool.submit(self.fetch, entry[1])
                    key, ref, future = pending.popleft()
                    waited = time.perf_counter()
                    batch = future.result() if future is not None else self.fetch(ref)
                    self.flow.wait_s += time.perf_counter() - waited
                    self._account(batch, len(pending) + 1)
                    yield key, batch
            finally:
                for entry in pending:  # an abandoned stream leaves no fetch behind
                    if entry[2] is not None:
                        entry[2].cancel()

    def _account(self, batch: dict, in_flight: int) -> None:
        node = int(batch["node_id"])
        flow = self.flow
        flow.samples += len(batch["ids"])
        flow.loader_cpu_s += float(batch["cpu_s"])
        flow.credit_cpu_s[node] = flow.credit_cpu_s.get(node, 0.0) + float(batch["cpu_s"])
        flow.credit_wall_s[node] = flow.credit_wall_s.get(node, 0.0) + float(batch["wall_s"])
        flow.max_in_flight_bytes = max(flow.max_in_flight_bytes, in_flight * int(batch["nbytes"]))


def _ray_get(ref: Any) -> dict:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    try:
        return ray.get(ref, timeout=BATCH_TIMEOUT_S)
    except GetTimeoutError as error:
        raise LostWorkersError(f"a loader produced no batch in {BATCH_TIMEOUT_S} s") from error
    except RayTaskError:
        raise  # the loader's own error (bad data): final or not, as it says
    except (RayActorError, ray.exceptions.ObjectLostError) as error:
        raise LostWorkersError(f"a loader was lost: {type(error).__name__}") from error
