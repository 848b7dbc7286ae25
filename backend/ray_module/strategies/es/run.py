"""Strategy ``es``: evolution strategies over worker actors on the placed nodes.

The runner's thread is the server: it starts one ``ESWorker`` per planned slot, resumes from
the job's checkpoint if there is one, runs the steps, and emits metrics, usage (for the
evaluations that were used), generated text, checkpoints and the final model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.events import ArtifactEvent, CheckpointEvent, MetricEvent
from protocol.run import PublishTarget, RunConfig
from protocol.strategies.es import ESSettings, parse_es_settings
from ray_module.contract import RunContext
from ray_module.errors import StartupError
from ray_module.storage.checkpoints import load_arrays, save_arrays
from ray_module.storage.gateway_files import fetch_inputs, publish_directory
from ray_module.strategies.actor_pool import first_alive
from ray_module.strategies.base import CHECKPOINT_DIR
from ray_module.strategies.es.estimator import SGD, Adam
from ray_module.strategies.es.noise import NoiseTable
from ray_module.strategies.es.server import ESServer, NoLiveWorkersError, Worker, make_optimizer
from ray_module.strategies.es.verification import Verifier
from ray_module.strategies.es.worker import ESWorker
from ray_module.strategies.es.worker_config import WorkerConfig
from ray_module.warm.claim import Slot, kill_actor, start_actors

if TYPE_CHECKING:  # it imports torch, which the runner needs only for a replay
    from ray_module.strategies.es.evaluator import ESEvaluator

WORKER_START_TIMEOUT_S = 600


def run_es(config: RunConfig, context: RunContext) -> None:
    config = fetch_inputs(config)  # the gateway's checkpoint, where nodes share no disk
    settings = parse_es_settings(config.training)
    workers, info = start_workers(config, settings)
    noise = NoiseTable.create(settings.seed, int(info["num_params"]))
    if noise.digest() != info["noise_digest"]:
        raise StartupError("the server's noise table differs from the workers'")
    optimizer = make_optimizer(settings)
    checkpoint_dir = Path(config.job_dir) / CHECKPOINT_DIR
    resumed = load_es_checkpoint(checkpoint_dir)
    if resumed is not None:
        theta, first_step = resumed.theta, resumed.step + 1
        restore_optimizer(optimizer, resumed)
    else:
        theta, first_step = initial_theta(workers), 1
    context.emit(MetricEvent(0, {"workers": [w.node_id for w in workers], **info}))
    verifier = Verifier(settings.seed, lambda: referee_evaluator(config, settings))
    server = ESServer(
        workers,
        settings,
        noise,
        optimizer,
        check_cancelled=context.check_cancelled,
        verifier=verifier,
    )
    for step in range(first_step, settings.steps + 1):
        context.check_cancelled()
        try:
            result = server.run_step(step, theta)
        except NoLiveWorkersError as error:
            for verdict in error.verdicts:  # what left every answer out still counts
                context.emit(verdict)
            raise
        theta = result.theta
        credits = list(result.credits)
        if step % settings.validation_interval == 0 or step == settings.steps:
            validated = server.validate(theta)
            if validated is not None:
                credit, metrics = validated
                result.metrics.update(metrics)
                credits.append(credit)
        context.emit(MetricEvent(step, result.metrics))
        for credit in credits:
            context.emit(credit.usage_event(step))
        if step % settings.checkpoint_interval == 0 or step == settings.steps:
            save_es_checkpoint(checkpoint_dir, step, theta, optimizer)
            publish_directory(config.publish, "checkpoint", checkpoint_dir)
            context.emit(CheckpointEvent(step, str(checkpoint_dir)))
        for verdict in result.verdicts:  # after the checkpoint: a valid one releases it too
            context.emit(verdict)
    final = save_final_model(workers, theta, Path(config.job_dir) / "model", config.publish)
    context.emit(ArtifactEvent(final))


def start_workers(config: RunConfig, settings: ESSettings) -> tuple[list[Worker], dict[str, Any]]:
    import ray

    if not config.workers:
        raise StartupError("es needs at least one placed worker")
    handles = start_actors(
        ESWorker,
        [Slot(plan.node_id, plan.cpu_cores, plan.gpu) for plan in config.workers],
        [
            (
                WorkerConfig(
                    job_id=config.job_id,
                    rank=rank,
                    node_id=plan.node_id,
                    gpu=plan.gpu,
                    cpu_cores=plan.cpu_cores,
                    memory_gb=plan.memory_gb,
                    model=config.model,
                    data=config.data,
                    settings=settings,
                ),
            )
            for rank, plan in enumerate(config.workers)
        ],
    )
    workers = [
        Worker(
            handle,
            plan.node_id,
            plan.gpu,
            plan.cpu_cores,
            plan.memory_gb,
            rank=rank,
            owner_id=plan.owner_id,
            valid_streak=plan.valid_streak,
        )
        for rank, (handle, plan) in enumerate(zip(handles, config.workers, strict=True))
    ]
    infos = []
    for worker in workers:
        try:
            infos.append(ray.get(worker.handle.info.remote(), timeout=WORKER_START_TIMEOUT_S))
        except ray.exceptions.RayTaskError:
            raise  # the worker's own error, typed: the runner decides whether to retry
        except ray.exceptions.RayActorError:
            worker.alive = False  # lost with its node: the others go on
        except ray.exceptions.GetTimeoutError:
            worker.alive = False
            kill_actor(worker.handle)  # free the slot it would hold
    if not infos:
        raise NoLiveWorkersError("no ES worker started")
    # Workers exchange only noise indices, so they must agree on model size and noise.
    sizes = {info["num_params"] for info in infos}
    if len(sizes) != 1:
        raise StartupError(f"workers built models of different sizes: {sorted(sizes)}")
    if len({info["noise_digest"] for info in infos}) != 1:
        raise StartupError("workers built different noise tables from the same seed")
    first = infos[0]
    return workers, {
        "num_params": first["num_params"],
        "vocab_size": first["vocab_size"],
        "train_characters": first["train_characters"],
        "noise_digest": first["noise_digest"],
    }


def referee_evaluator(config: RunConfig, settings: ESSettings) -> ESEvaluator:
    """The runner's own evaluator, built the first time two nodes disagree on a replay."""
    from ray_module.strategies.es.evaluator import ESEvaluator

    return ESEvaluator(
        WorkerConfig(
            job_id=config.job_id,
            rank=-1,
            node_id=0,
            gpu=0,
            cpu_cores=1,
            memory_gb=1,
            model=config.model,
            data=config.data,
            settings=settings,
        )
    )


def initial_theta(workers: list[Worker]) -> np.ndarray:
    return first_alive(workers, lambda worker: worker.handle.initial_parameters.remote())


def save_final_model(
    workers: list[Worker], theta: np.ndarray, directory: Path, publish: PublishTarget | None
) -> str:
    """Saved (and published) by a live worker, on whichever node it runs."""
    import ray

    theta_ref = ray.put(theta)
    return first_alive(
        workers, lambda w: w.handle.save_model.remote(theta_ref, str(directory), publish)
    )


# -- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ESCheckpoint:
    step: int
    theta: np.ndarray
    state: dict[str, np.ndarray]
    optimizer_t: int


def save_es_checkpoint(directory: Path, step: int, theta: np.ndarray, optimizer: Any) -> None:
    arrays = {"theta": theta}
    for name in ("m", "v", "velocity"):  # Adam's moments or SGD's velocity, once they exist
        value = getattr(optimizer, name, None)
        if value is not None:
            arrays[name] = value
    save_arrays(directory, arrays, {"step": step, "optimizer_t": optimizer.t})


def load_es_checkpoint(directory: Path) -> ESCheckpoint | None:
    loaded = load_arrays(directory)
    if loaded is None:
        return None
    arrays, state = loaded
    theta = arrays.pop("theta")
    return ESCheckpoint(int(state["step"]), theta, arrays, int(state["optimizer_t"]))


def restore_optimizer(optimizer: Adam | SGD, checkpoint: ESCheckpoint) -> None:
    for name, value in checkpoint.state.items():
        setattr(optimizer, name, value)
    optimizer.t = checkpoint.optimizer_t
