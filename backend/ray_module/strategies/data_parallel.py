"""Data-parallel fine-tuning of a causal language model with Ray Train's TorchTrainer
(gloo on CPU, NCCL on GPU), one worker per planned slot, pinned to its node by label."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ray_module import events
from ray_module.directories import readable, replace_directory, staging_for
from ray_module.resource_manager import NODE_LABEL
from ray_module.training import NAMESPACE, JobRunner, RunConfig, runner_name

DEFAULTS = {
    "epochs": None,  # with max_steps alone: as many epochs as it takes; neither: one epoch
    "max_steps": None,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "seq_len": 64,
    "validation_split": 0.1,
}


def settings_of(config: RunConfig) -> dict[str, Any]:
    training = {k: v for k, v in config.training.items() if v is not None}
    merged = {**DEFAULTS, **training}
    if config.data.get("validation_split"):
        merged["validation_split"] = config.data["validation_split"]
    return merged


def run_data_parallel(config: RunConfig, runner: JobRunner) -> None:
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
        "runner": runner_name(config.job_id),
        "model": config.model,
        "data": config.data,
        "training": settings_of(config),
        "job_dir": config.job_dir,
        "memory_gb": workers[0].memory_gb,
        "cpu_cores": workers[0].cpu_cores,
        "gpu": workers[0].gpu,
    }
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
    runner.check_cancelled()
    trainer.fit()


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs in every Ray Train worker."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ray_module.data_handler import DataRequest, load_texts, pack_blocks, split_blocks
    from ray_module.model_registry import ModelRequest, load_causal_lm

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    runner = ray.get_actor(cfg["runner"], namespace=NAMESPACE)
    labels = ray.get_runtime_context().get_node_labels()
    node_id = int(_first(labels.get(NODE_LABEL, "0")))
    settings = cfg["training"]
    job_dir = Path(cfg["job_dir"])
    checkpoint_dir = job_dir / "checkpoint"
    started = time.monotonic()

    saved = readable(checkpoint_dir)  # the last checkpoint, even if a crash moved it aside
    resume = _load_checkpoint_state(saved) if saved is not None else None
    request = ModelRequest(**cfg["model"])
    if resume is not None:
        request = ModelRequest(model_type=request.model_type, model_name=str(saved / "model"))
    data_root = cfg["data"].get("data_root")
    model, tokenizer = load_causal_lm(request, local_root=Path(data_root) if data_root else None)
    texts = load_texts(DataRequest(**cfg["data"]))
    blocks = pack_blocks(texts, tokenizer, int(settings["seq_len"]))
    train_blocks, validation_blocks = split_blocks(blocks, float(settings["validation_split"]))
    shard = train_blocks[rank::world]
    batch_size = int(settings["batch_size"])
    batches_per_epoch = max(1, math.ceil(len(shard) / batch_size))
    total_steps = total_steps_for(settings, batches_per_epoch)
    checkpoint_every = int(settings.get("checkpoint_interval") or batches_per_epoch)

    # A slot with a GPU on a machine without CUDA (a logical GPU) trains on the CPU.
    model = prepare_model(model, move_to_device=torch.cuda.is_available())
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(settings["learning_rate"]))
    step = resume["step"] if resume else 0
    generator = torch.Generator().manual_seed(1234)
    last_report = started
    model.train()
    while step < total_steps:
        epoch = step // batches_per_epoch
        order = torch.randperm(len(shard), generator=generator.manual_seed(1234 + epoch))
        first = step % batches_per_epoch
        for batch_index in range(first, batches_per_epoch):
            if step >= total_steps:
                break
            ids = shard[order[batch_index * batch_size : (batch_index + 1) * batch_size]].to(device)
            tic = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0:
                elapsed = time.perf_counter() - tic
                runner.emit.remote(
                    events.metric(
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
                        events.metric(
                            step,
                            {
                                "validation_loss": _validation_loss(
                                    model, validation_blocks, batch_size, device
                                ),
                                "epoch": epoch,
                            },
                        )
                    )
                if rank == 0:
                    _save_checkpoint(model, tokenizer, checkpoint_dir, step)
                    runner.emit.remote(events.checkpoint(step, str(checkpoint_dir)))
                now = time.monotonic()
                _report_usage(runner, cfg, node_id, now - last_report)
                last_report = now
    if rank == 0:
        final_dir = job_dir / "model"
        _unwrap(model).save_pretrained(final_dir)
        tokenizer.save_pretrained(final_dir)
        runner.emit.remote(events.artifact(str(final_dir)))
    ray.train.report({"step": step})


def total_steps_for(settings: dict[str, Any], batches_per_epoch: int) -> int:
    """epochs and max_steps both bound the run; max_steps alone sets it."""
    max_steps = int(settings["max_steps"]) if settings.get("max_steps") else None
    if settings.get("epochs"):
        total = int(settings["epochs"]) * batches_per_epoch
        return min(total, max_steps) if max_steps else total
    return max_steps or batches_per_epoch


def _first(value: Any) -> str:
    return value[0] if isinstance(value, list | tuple) else str(value)


def _unwrap(model: Any) -> Any:
    return model.module if hasattr(model, "module") else model


def _report_usage(runner: Any, cfg: dict[str, Any], node_id: int, seconds: float) -> None:
    """Completed work since the last checkpoint: what this worker held, times wall time."""
    import ray

    ray.get(
        runner.emit.remote(
            events.usage(
                node_id,
                gpu_seconds=cfg["gpu"] * seconds,
                cpu_core_seconds=cfg["cpu_cores"] * seconds,
                memory_gb_seconds=cfg["memory_gb"] * seconds,
            )
        )
    )


def _validation_loss(model: Any, blocks: Any, batch_size: int, device: Any) -> float:
    import torch

    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            ids = blocks[start : start + batch_size].to(device)
            losses.append(float(_unwrap(model)(input_ids=ids, labels=ids).loss))
    model.train()
    return sum(losses) / max(1, len(losses))


def _save_checkpoint(model: Any, tokenizer: Any, directory: Path, step: int) -> None:
    """Weights as safetensors (save_pretrained) and the step as JSON: nothing is pickled."""
    staging = staging_for(directory)
    _unwrap(model).save_pretrained(staging / "model")
    tokenizer.save_pretrained(staging / "model")
    (staging / "state.json").write_text(json.dumps({"step": step}))
    replace_directory(staging, directory)


def _load_checkpoint_state(directory: Path) -> dict[str, Any] | None:
    state = directory / "state.json"
    if not state.exists():
        return None
    return json.loads(state.read_text())
