"""Strategy ``split``'s run, in the runner's thread: start the loader actors on the data
stage's nodes and the worker (trainer, evaluator or predictor) on the trainer's node, let
the worker pull batches from the loaders until its task is done, and stop everything on
cancel. A lost loader or worker fails the attempt as retryable; the next attempt resumes
from the checkpoint on live nodes."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from protocol.run import RunConfig, WorkerPlan
from protocol.strategies.split import SplitSettings, loader_actors, parse_split_settings
from ray_module.contract import RunContext, runner_name
from ray_module.errors import LostWorkersError, StartupError
from ray_module.strategies.actor_pool import raise_startup_failure
from ray_module.strategies.split.loader import BatchLoader, DataShape, LoaderConfig
from ray_module.strategies.split.results import InferenceSettings
from ray_module.strategies.split.samples import part_ids, split_ids
from ray_module.strategies.split.worker import DataPlan, SplitWorker, WorkerConfig
from ray_module.warm.claim import Slot, kill_actor, start_actors

LOADER_ROLE = "loader"
START_TIMEOUT_S = 600
POLL_S = 1.0


def settings_of(config: RunConfig) -> SplitSettings:
    settings = parse_split_settings(config.training)
    if config.data.validation_split:
        settings = replace(settings, validation_split=config.data.validation_split)
    return settings


def loader_plans(config: RunConfig) -> list[WorkerPlan]:
    """One plan per loader actor: each loader slot runs one actor per whole core, as far as
    its memory holds them."""
    plans = []
    for slot in (w for w in config.workers if w.role == LOADER_ROLE):
        actors = loader_actors(slot.cpu_cores, slot.memory_gb)
        share = replace(slot, cpu_cores=slot.cpu_cores / actors, memory_gb=slot.memory_gb / actors)
        plans.extend([share] * actors)
    return plans


def trainer_plan(config: RunConfig) -> WorkerPlan:
    trainers = [w for w in config.workers if w.role != LOADER_ROLE]
    if len(trainers) != 1:
        raise StartupError(f"split needs one trainer slot, the placement has {len(trainers)}")
    return trainers[0]


def run_split(config: RunConfig, context: RunContext) -> None:
    import ray

    settings = settings_of(config)
    plans = loader_plans(config)
    if not plans:
        raise StartupError("split needs at least one loader slot in its placement")
    # The trainer starts beside the loaders (each a process that imports torch), not after
    # them: it needs the data's shape only once it runs.
    loaders = start_loaders(config, settings, plans)
    actors = list(loaders)
    try:
        worker = start_worker(config, settings, trainer_plan(config), plans)
        actors.append(worker)
        data = data_plan(config, settings, data_shape(loaders))
        context.check_cancelled()
        done = worker.run.remote(loaders, data)
        while not ray.wait([done], timeout=POLL_S)[0]:
            if _cancelled(context):
                context.check_cancelled()
        ray.get(done)
    finally:
        for actor in actors:  # their slots are free the moment the run ends, however
            kill_actor(actor)


def part_name(config: RunConfig, part: str) -> str:
    """``distlm-job-7-a1-loader-<unique>``: which job, attempt and part an actor is, in Ray's
    own records (unique: a name is only freed some time after its actor is killed)."""
    return f"{runner_name(config.job_id)}-a{config.attempt}-{part}-{uuid.uuid4().hex[:8]}"


def _cancelled(context: RunContext) -> bool:
    try:
        context.check_cancelled()
    except Exception:
        return True
    return False


def start_loaders(config: RunConfig, settings: SplitSettings, plans: list[WorkerPlan]) -> list:
    return start_actors(
        BatchLoader,
        [Slot(plan.node_id, plan.cpu_cores) for plan in plans],
        [
            (
                LoaderConfig(
                    node_id=plan.node_id,
                    model_type=config.model.model_type,
                    data=config.data,
                    model=config.model,
                    seq_len=settings.seq_len,
                    seed=settings.seed,
                    job_id=config.job_id,
                    number=number,
                    augment=settings.augment,
                ),
            )
            for number, plan in enumerate(plans)
        ],
        # Named per attempt, so Ray's own records say where each part ran.
        names=[f"{part_name(config, 'loader')}-{number}" for number in range(len(plans))],
    )


def data_shape(loaders: list[Any]) -> DataShape:
    """Every loader has read the data (they must agree on its size)."""
    import ray

    try:
        shapes = ray.get([loader.describe.remote() for loader in loaders], timeout=START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as error:
        raise LostWorkersError(f"the loaders did not start in {START_TIMEOUT_S} s") from error
    except Exception as error:
        raise_startup_failure(error, "a loader")
        raise
    if len({shape.size for shape in shapes}) != 1:
        raise StartupError(
            f"the loaders read different amounts of data ({sorted({s.size for s in shapes})}):"
            " every loader node needs the same file"
        )
    return shapes[0]


def data_plan(config: RunConfig, settings: SplitSettings, shape: DataShape) -> DataPlan:
    train_ids, validation_ids = split_ids(shape.size, settings.validation_split, settings.seed)
    # data_config.split picks the rows of a validate/infer job: for hub datasets it is the
    # hub's split (already applied when loading), otherwise a side of the training split.
    part = config.data.split if config.data.data_source != "huggingface" else "all"
    return DataPlan(
        shape=shape,
        train_ids=train_ids,
        validation_ids=validation_ids,
        task_ids=part_ids(shape.size, part, settings.validation_split, settings.seed),
    )


def start_worker(
    config: RunConfig, settings: SplitSettings, trainer: WorkerPlan, plans: list[WorkerPlan]
) -> Any:

    worker_config = WorkerConfig(
        job_id=config.job_id,
        runner=runner_name(config.job_id),
        task=config.task,
        model=config.model,
        model_type=config.model.model_type,
        settings=settings,
        inference=InferenceSettings.of(config.inference),
        job_dir=config.job_dir,
        data_root=config.data.data_root,
        publish=config.publish,
        trainer=trainer,
        loaders=tuple(plans),
        data=config.data,
        audited_task=config.request.audit.get("task", "train"),
        audit_draws=tuple(int(i) for i in config.request.audit.get("draws", ())),
    )
    slot = Slot(trainer.node_id, trainer.cpu_cores, trainer.gpu)
    names = [part_name(config, config.task)]
    return start_actors(SplitWorker, [slot], [(worker_config,)], names=names)[0]
