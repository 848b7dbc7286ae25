"""Data-parallel fine-tuning of a causal language model: one ``DataParallelRank`` actor per
planned slot, pinned to its node, in one process group (gloo on CPU, NCCL on CUDA).

The runner's thread starts the ranks, gives them rank 0's rendezvous address and waits. The
first rank to fail stops the others at once (they would wait in their next all-reduce for a
rank that is gone) and its error decides the attempt: a lost node is retryable, bad data is
not. Ranks stop together at a checkpoint when the job is cancelled.

No Ray Train: its controller and worker group cost about 10 s of every run's start (a 2-step
run reached its first step after 15 s; ``benchmarks/run_start.py``) for what is, here, a
fixed group of actors that live as long as the attempt.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from protocol.run import RunConfig
from protocol.strategies.data_parallel import (
    DataParallelSettings,
    parse_data_parallel_settings,
)
from ray_module.contract import RunContext
from ray_module.errors import StartupError
from ray_module.strategies.data_parallel.rank import DataParallelRank, RankConfig
from ray_module.warm.claim import Slot, kill_actor, start_actors

RENDEZVOUS_TIMEOUT_S = 600


def settings_of(config: RunConfig) -> DataParallelSettings:
    settings = parse_data_parallel_settings(config.training)
    if config.data.validation_split:
        settings = replace(settings, validation_split=config.data.validation_split)
    return settings


def run_data_parallel(config: RunConfig, context: RunContext) -> None:
    import ray

    if not config.workers:
        raise StartupError("data_parallel needs at least one placed worker")
    settings = settings_of(config)
    context.check_cancelled()
    ranks = start_ranks(config, settings)
    try:
        rendezvous = ray.get(ranks[0].rendezvous.remote(), timeout=RENDEZVOUS_TIMEOUT_S)
        wait_for_all([rank.train.remote(rendezvous) for rank in ranks])
    finally:
        for rank in ranks:
            kill_actor(rank)  # a rank still waiting on a lost peer, or idle after its work


def start_ranks(config: RunConfig, settings: DataParallelSettings) -> list[Any]:
    return start_actors(
        DataParallelRank,
        [Slot(plan.node_id, plan.cpu_cores, plan.gpu) for plan in config.workers],
        [(RankConfig(config, settings, rank, plan),) for rank, plan in enumerate(config.workers)],
    )


def wait_for_all(pending: list[Any]) -> None:
    """Every rank's answer; the first failure raises at once (typed: a rank's own error is a
    ``RayTaskError`` that is also that error, a lost one a ``RayActorError``)."""
    import ray

    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            ray.get(ref)
