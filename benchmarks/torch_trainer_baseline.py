"""The baseline for data_parallel's start: the same ranks' training loop run under Ray Train's
``TorchTrainer`` (its controller, worker group and process group), as DistLM ran it until
December 2026, with a stand-in runner actor that only records events.

Used by ``run_start.py`` and ``jobs.py``: both time it against ``run_data_parallel`` (our own
group of rank actors) in the same process, on the same cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from protocol.events import MetricEvent
from protocol.run import RunConfig
from ray_module.contract import NAMESPACE, runner_name
from ray_module.resources import NODE_LABEL
from ray_module.runner.job_runner import JobRunner
from ray_module.strategies.data_parallel.rank import DataParallelRank, RankConfig
from ray_module.strategies.data_parallel.run import run_data_parallel, settings_of


def run_with_torch_trainer(config: RunConfig) -> None:
    import ray.train
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers = config.workers
    settings = settings_of(config)

    def loop(_: dict) -> None:
        rank = ray.train.get_context().get_world_rank()
        # Ray Train made the process group: the rank wraps its model in DDP over it.
        DataParallelRank(RankConfig(config, settings, rank, workers[rank]))._train()

    TorchTrainer(
        loop,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=len(workers),
            resources_per_worker={"CPU": workers[0].cpu_cores},
            label_selector=[{NODE_LABEL: str(w.node_id)} for w in workers],
        ),
        run_config=TrainRunConfig(
            name=f"baseline-{config.job_id}",
            storage_path=f"{config.job_dir}/ray-train",
            failure_config=FailureConfig(max_failures=0),
        ),
    ).fit()


def run_ours(config: RunConfig) -> None:
    run_data_parallel(config, JobRunner(config))


@contextmanager
def event_sink(config: RunConfig) -> Iterator[Any]:
    """A runner actor under the job's name that only records what the ranks emit."""
    import ray

    sink = (
        ray.remote(JobRunner)
        .options(
            name=runner_name(config.job_id), namespace=NAMESPACE, num_cpus=0, max_concurrency=16
        )
        .remote(config)
    )
    try:
        yield sink
    finally:
        ray.kill(sink)


def timed(run: Callable[[RunConfig], None], config: RunConfig) -> tuple[float, float]:
    """Seconds from the call to the first step's metric, and to the run's return."""
    import ray

    with event_sink(config) as sink:
        failure: list[BaseException] = []

        def call() -> None:
            try:
                run(config)
            except BaseException as error:  # re-raised below, in the caller's thread
                failure.append(error)

        started = time.perf_counter()
        thread = threading.Thread(target=call)
        thread.start()
        first_step = None
        while thread.is_alive():
            if first_step is None and any(
                isinstance(r.event, MetricEvent) and r.event.step > 0
                for r in ray.get(sink.events.remote(0))
            ):
                first_step = time.perf_counter() - started
            time.sleep(0.05)
        end = time.perf_counter() - started
        if failure:
            raise failure[0]
        return first_step or end, end
