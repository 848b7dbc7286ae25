"""Data-parallel fine-tuning of a causal language model with Ray Train's TorchTrainer
(gloo on CPU, NCCL on GPU), one worker per planned slot, pinned to its node by label."""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from protocol.events import ArtifactEvent, CheckpointEvent, MetricEvent, UsageEvent
from protocol.run import RunConfig
from protocol.strategies.data_parallel import (
    DataParallelSettings,
    parse_data_parallel_settings,
)
from ray_module.contract import NAMESPACE, RunContext, runner_name
from ray_module.errors import RunCancelledError
from ray_module.resources import NODE_LABEL
from ray_module.storage.gateway_files import fetch_inputs, publish_directory
from ray_module.strategies.base import CHECKPOINT_DIR
from ray_module.strategies.data_parallel.checkpoint import load_checkpoint, save_checkpoint
from ray_module.worker_logs import capture_worker_output


def settings_of(config: RunConfig) -> DataParallelSettings:
    settings = parse_data_parallel_settings(config.training)
    if config.data.validation_split:
        settings = replace(settings, validation_split=config.data.validation_split)
    return settings


# Ray Train's controller looks at its workers every 2 s by default, so a run's end (and a lost
# worker) was seen up to 2 s late and a 2-step run took 22 s instead of 18. Ray Train passes
# this variable on from the process that calls fit() to its controller, whichever Ray it is.
HEALTH_CHECK_INTERVAL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def run_data_parallel(config: RunConfig, context: RunContext) -> None:
    import torch
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers = config.workers
    use_gpu = any(w.gpu for w in workers)
    per_worker: dict[str, float] = {"CPU": workers[0].cpu_cores}
    if use_gpu:
        per_worker["GPU"] = workers[0].gpu
    loop_config = {
        "job_id": config.job_id,
        "run_config": config,  # each rank fetches the gateway's inputs on its node
        "publish": config.publish,
        "runner": runner_name(config.job_id),
        "model": config.model,
        "data": config.data,
        "settings": settings_of(config),
        "job_dir": config.job_dir,
        "memory_gb": workers[0].memory_gb,
        "cpu_cores": workers[0].cpu_cores,
        "gpu": workers[0].gpu,
    }
    os.environ.setdefault(*HEALTH_CHECK_INTERVAL)  # an operator's own setting stands
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        # NCCL needs CUDA; logical GPUs (tests) and CPU-only clusters use gloo.
        torch_config=TorchConfig(
            backend="nccl" if use_gpu and torch.cuda.is_available() else "gloo"
        ),
        scaling_config=ScalingConfig(
            num_workers=len(workers),
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
            label_selector=[{NODE_LABEL: str(w.node_id)} for w in workers],
        ),
        run_config=TrainRunConfig(
            name=f"job-{config.job_id}-attempt-{config.attempt}",
            storage_path=f"{config.job_dir}/ray-train",
            # A lost worker fails the attempt; the dispatcher re-plans on live nodes and the
            # next attempt resumes from our checkpoint.
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    context.check_cancelled()
    trainer.fit()


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs in every Ray Train worker."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ray_module.data.texts import load_texts, pack_blocks, split_blocks
    from ray_module.models.registry import load_model

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    runner = ray.get_actor(cfg["runner"], namespace=NAMESPACE)
    labels = ray.get_runtime_context().get_node_labels()
    node_id = int(_first(labels.get(NODE_LABEL, "0")))
    capture_worker_output(cfg["run_config"].job_id, f"rank {rank} on node {node_id}")
    settings: DataParallelSettings = cfg["settings"]
    job_dir = Path(cfg["job_dir"])
    checkpoint_dir = job_dir / CHECKPOINT_DIR
    started = time.monotonic()

    request = fetch_inputs(cfg["run_config"]).model
    resume = load_checkpoint(checkpoint_dir)
    if resume is not None:
        request = replace(request, model_name=str(resume[0]), pretrained=None, overrides={})
    data_root = cfg["data"].data_root
    model = load_model(request, local_root=Path(data_root) if data_root else None)
    texts = load_texts(cfg["data"])
    blocks = pack_blocks(texts, model.companion, settings.seq_len)
    train_blocks, validation_blocks = split_blocks(blocks, settings.validation_split)
    shard = train_blocks[rank::world]
    batch_size = settings.batch_size
    batches_per_epoch = max(1, math.ceil(len(shard) / batch_size))
    total_steps = settings.total_steps(batches_per_epoch)
    checkpoint_every = settings.checkpoint_interval or batches_per_epoch

    # A slot with a GPU on a machine without CUDA (a logical GPU) trains on the CPU.
    model.network = prepare_model(model.network, move_to_device=torch.cuda.is_available())
    model.device = device = next(model.network.parameters()).device
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=settings.learning_rate)
    step = resume[1] if resume else 0
    generator = torch.Generator().manual_seed(1234)
    last_report = started
    model.network.train()
    while step < total_steps:
        epoch = step // batches_per_epoch
        order = torch.randperm(len(shard), generator=generator.manual_seed(1234 + epoch))
        first = step % batches_per_epoch
        for batch_index in range(first, batches_per_epoch):
            if step >= total_steps:
                break
            ids = shard[order[batch_index * batch_size : (batch_index + 1) * batch_size]].to(device)
            tic = time.perf_counter()
            loss = model.loss({"input_ids": ids})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0:
                elapsed = time.perf_counter() - tic
                runner.emit.remote(
                    MetricEvent(
                        step,
                        {
                            "loss": float(loss.detach()),
                            "perplexity": float(math.exp(min(float(loss.detach()), 50))),
                            "epoch": epoch,
                            "tokens_per_s": ids.numel() * world / max(elapsed, 1e-9),
                        },
                    )
                )
            end_of_epoch = step % batches_per_epoch == 0 or step == total_steps
            if step % checkpoint_every == 0 or end_of_epoch:
                if end_of_epoch and rank == 0:
                    runner.emit.remote(
                        MetricEvent(
                            step,
                            {
                                "validation_loss": _validation_loss(
                                    model, validation_blocks, batch_size
                                ),
                                "epoch": epoch,
                            },
                        )
                    )
                if rank == 0:
                    save_checkpoint(model, checkpoint_dir, step)
                    publish_directory(cfg["publish"], "checkpoint", checkpoint_dir)
                    runner.emit.remote(CheckpointEvent(step, str(checkpoint_dir)))
                now = time.monotonic()
                _report_usage(runner, cfg, node_id, now - last_report, step)
                last_report = now
                if ray.get(runner.cancel_requested.remote()):
                    raise RunCancelledError()  # every rank stops at the same checkpoint
    if rank == 0:
        final_dir = job_dir / "model"
        model.save(final_dir)
        publish_directory(cfg["publish"], "model", final_dir)
        runner.emit.remote(ArtifactEvent(str(final_dir)))
    ray.train.report({"step": step})


def _first(value: Any) -> str:
    return value[0] if isinstance(value, list | tuple) else str(value)


def _report_usage(
    runner: Any, cfg: dict[str, Any], node_id: int, seconds: float, step: int
) -> None:
    """Completed work since the last checkpoint, up to ``step``: what this worker held,
    times wall time."""
    import ray

    usage = UsageEvent.for_slot(
        node_id, gpu=cfg["gpu"], cpu_cores=cfg["cpu_cores"], memory_gb=cfg["memory_gb"],
        seconds=seconds, step=step,
    )  # fmt: skip
    ray.get(runner.emit.remote(usage))


def _validation_loss(model: Any, blocks: Any, batch_size: int) -> float:
    """The held-out blocks' token-weighted loss, on the unwrapped network (rank 0 alone: a
    DDP forward would wait for the other ranks)."""
    import torch

    from ray_module.models.contract import Model

    alone = Model(model.adapter, model.unwrapped, model.companion, model.device)
    alone.network.eval()
    scorer = alone.scorer()
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            scorer.add(alone.batch({"input_ids": blocks[start : start + batch_size]}))
    alone.network.train()
    return scorer.metrics()["loss"] if len(blocks) else 0.0
