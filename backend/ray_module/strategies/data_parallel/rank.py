"""One data-parallel rank: a Ray actor on one placed node that loads the model and its shard
of the data, joins the job's process group (gloo on CPU, NCCL on CUDA) and trains, with
gradients all-reduced by DistributedDataParallel every step. Rank 0 reports metrics, saves and
publishes checkpoints and the final model; every rank reports its own usage at checkpoints.

A plain class, wrapped with ``ray.remote`` by ``run``.
"""

from __future__ import annotations

import datetime as dt
import math
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protocol.events import (
    ArtifactEvent,
    CheckpointEvent,
    MetricEvent,
    UsageEvent,
    VerdictEvent,
)
from protocol.run import RunConfig, WorkerPlan
from protocol.strategies.data_parallel import DataParallelSettings
from ray_module.contract import NAMESPACE, runner_name
from ray_module.errors import RetryableRunError, RunCancelledError
from ray_module.storage.gateway_files import fetch_inputs, publish_directory
from ray_module.strategies.base import CHECKPOINT_DIR
from ray_module.strategies.data_parallel.checkpoint import load_checkpoint, save_checkpoint
from ray_module.strategies.data_parallel.verification import StepChecker, dropout_seed
from ray_module.threads import use_cores
from ray_module.worker_logs import capture_worker_output

# How long a rank waits in a collective for the others. A lost rank is seen by the runner,
# which stops the rest at once; this only bounds a hang nobody noticed.
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=30)
SHUFFLE_SEED = 1234


@dataclass(frozen=True)
class RankConfig:
    run: RunConfig  # each rank fetches the gateway's inputs on its own node
    settings: DataParallelSettings
    rank: int
    plan: WorkerPlan

    @property
    def world(self) -> int:
        return len(self.run.workers)


def free_address() -> tuple[str, int]:
    """This node's address and a port free on it, for the process group's rendezvous."""
    import ray

    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return ray.util.get_node_ip_address(), port


class DataParallelRank:
    def __init__(self, config: RankConfig) -> None:
        self.config = config
        capture_worker_output(
            config.run.job_id, f"rank {config.rank} on node {config.plan.node_id}"
        )
        use_cores(config.plan.cpu_cores)

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address: where every rank meets to form the process group."""
        return free_address()

    def train(self, rendezvous: tuple[str, int]) -> int:
        """Train to the end (or to a cancel at a checkpoint); the last step."""
        import torch.distributed as dist

        cfg = self.config
        if cfg.world > 1:
            address, port = rendezvous
            dist.init_process_group(
                backend=self._backend(),
                init_method=f"tcp://{address}:{port}",
                rank=cfg.rank,
                world_size=cfg.world,
                timeout=COLLECTIVE_TIMEOUT,
            )
        try:
            return self._train()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    def _backend(self) -> str:
        import torch

        # NCCL needs CUDA; logical GPUs (tests) and CPU-only clusters use gloo.
        return "nccl" if self.config.plan.gpu and torch.cuda.is_available() else "gloo"

    def _device(self) -> Any:
        import torch

        # A slot with a GPU on a machine without CUDA (a logical GPU) trains on the CPU. Ray
        # shows an actor only its own GPUs, so its first visible one is its own.
        if self.config.plan.gpu and torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")

    def _train(self) -> int:
        import ray
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        from ray_module.data.texts import load_texts, pack_blocks, split_blocks
        from ray_module.models.registry import load_model

        cfg, settings = self.config, self.config.settings
        rank, world = cfg.rank, cfg.world
        runner = ray.get_actor(runner_name(cfg.run.job_id), namespace=NAMESPACE)
        job_dir = Path(cfg.run.job_dir)
        checkpoint_dir = job_dir / CHECKPOINT_DIR
        started = time.monotonic()

        inputs = fetch_inputs(cfg.run)
        request = inputs.model
        resume = load_checkpoint(checkpoint_dir)
        if resume is not None:
            request = replace(request, model_name=str(resume[0]), pretrained=None, overrides={})
        data_root = inputs.data.data_root
        model = load_model(request, local_root=Path(data_root) if data_root else None)
        texts = load_texts(inputs.data)
        blocks = pack_blocks(texts, model.companion, settings.seq_len)
        train_blocks, validation_blocks = split_blocks(blocks, settings.validation_split)
        shard = shard_of(train_blocks, rank, world)
        batch_size = settings.batch_size
        batches_per_epoch = max(1, math.ceil(len(shard) / batch_size))
        total_steps = settings.total_steps(batches_per_epoch)
        checkpoint_every = settings.checkpoint_interval or batches_per_epoch

        device = self._device()
        model.to(device)
        if dist.is_initialized():  # gradients all-reduced over the group every step
            model.network = DistributedDataParallel(
                model.network, device_ids=[0] if device.type == "cuda" else None
            )
        optimizer = torch.optim.AdamW(model.network.parameters(), lr=settings.learning_rate)
        step = resume[1] if resume else 0
        generator = torch.Generator()
        last_report = started
        model.network.train()
        checker = (
            StepChecker(rank, cfg.run.workers, cfg.run.job_id, deliver=self._sender(runner))
            if world > 1
            else None
        )
        check_next = True  # the attempt's first step, then the first after each checkpoint

        def replay(of_rank: int) -> float:
            """``of_rank``'s loss at this step (``step``, ``picked``: the loop's, read when the
            check calls it) on this rank's weights. Shards are equal and shuffled alike, so its
            batch is the same positions of its own shard."""
            alone = unwrapped_model(model)
            ids = shard_of(train_blocks, of_rank, world)[picked].to(device)
            torch.manual_seed(dropout_seed(cfg.run.job_id, step, of_rank))
            with torch.no_grad():
                return float(alone.loss({"input_ids": ids}))

        while step < total_steps:
            epoch = step // batches_per_epoch
            generator.manual_seed(SHUFFLE_SEED + epoch)
            order = torch.randperm(len(shard), generator=generator)
            first = step % batches_per_epoch
            for batch_index in range(first, batches_per_epoch):
                if step >= total_steps:
                    break
                picked = order[batch_index * batch_size : (batch_index + 1) * batch_size]
                ids = shard[picked].to(device)
                tic = time.perf_counter()
                torch.manual_seed(dropout_seed(cfg.run.job_id, step, rank))
                loss = model.loss({"input_ids": ids})
                optimizer.zero_grad()
                loss.backward()
                if checker is not None and check_next:  # before the update: same weights
                    self._judge(*checker.check(step + 1, float(loss.detach()), replay))
                check_next = False
                optimizer.step()
                step += 1
                if rank == 0:
                    elapsed = time.perf_counter() - tic
                    value = float(loss.detach())
                    runner.emit.remote(
                        MetricEvent(
                            step,
                            {
                                "loss": value,
                                "perplexity": float(math.exp(min(value, 50))),
                                "epoch": epoch,
                                "tokens_per_s": ids.numel() * world / max(elapsed, 1e-9),
                            },
                        )
                    )
                end_of_epoch = step % batches_per_epoch == 0 or step == total_steps
                if step % checkpoint_every == 0 or end_of_epoch:
                    check_next = True
                    if end_of_epoch and rank == 0:
                        validation = validation_loss(model, validation_blocks, batch_size)
                        runner.emit.remote(
                            MetricEvent(step, {"validation_loss": validation, "epoch": epoch})
                        )
                    if rank == 0:
                        save_checkpoint(model, checkpoint_dir, step)
                        publish_directory(cfg.run.publish, "checkpoint", checkpoint_dir)
                        runner.emit.remote(CheckpointEvent(step, str(checkpoint_dir)))
                    now = time.monotonic()
                    self._report_usage(runner, now - last_report, step)
                    last_report = now
                    if ray.get(runner.cancel_requested.remote()):
                        raise RunCancelledError()  # every rank stops at the same checkpoint
        if rank == 0:
            final_dir = job_dir / "model"
            model.save(final_dir)
            publish_directory(cfg.run.publish, "model", final_dir)
            runner.emit.remote(ArtifactEvent(str(final_dir)))
        return step

    @staticmethod
    def _sender(runner: Any) -> Any:
        """Sends rank 0's verdicts to the runner, and waits until it has them."""
        import ray

        def deliver(verdicts: list[VerdictEvent]) -> None:
            ray.get([runner.emit.remote(verdict) for verdict in verdicts])

        return deliver

    def _judge(self, verdicts: list[VerdictEvent], stop: bool) -> None:
        """Every rank stops the attempt when a verdict is invalid (the sum of gradients it
        took part in cannot be undone: the job resumes without it); rank 0 has sent them."""
        if stop:
            invalid = sorted({v.node_id for v in verdicts if not v.valid})
            who = f"node(s) {', '.join(map(str, invalid))}" if invalid else "a rank"
            raise ResultsRejectedError(
                f"the work of {who} failed validation: resuming from the last checkpoint without it"
            )

    def _report_usage(self, runner: Any, seconds: float, step: int) -> None:
        """Completed work since the last checkpoint, up to ``step``: what this rank held,
        times wall time."""
        import ray

        plan = self.config.plan
        usage = UsageEvent.for_slot(
            plan.node_id, gpu=plan.gpu, cpu_cores=plan.cpu_cores, memory_gb=plan.memory_gb,
            seconds=seconds, step=step,
        )  # fmt: skip
        ray.get(runner.emit.remote(usage))


def shard_of(blocks: Any, rank: int, world: int) -> Any:
    """``rank``'s blocks, every rank's as many: a rank with one block more would take another
    step per epoch than the rest, and wait alone in its collectives (the gradients' all-reduce,
    the checks) at the epoch's end. Up to ``world - 1`` blocks are left out, as
    DistributedSampler's ``drop_last`` does; with fewer blocks than ranks, all are kept."""
    even = len(blocks) - len(blocks) % world
    return blocks[:even][rank::world] if even else blocks[rank::world]


class ResultsRejectedError(RetryableRunError):
    """A rank's work failed validation: the attempt stops, the job resumes without its node."""


def unwrapped_model(model: Any) -> Any:
    """The model on its plain network: a DDP forward would wait for the other ranks."""
    from ray_module.models.contract import Model

    return Model(model.adapter, model.unwrapped, model.companion, model.device)


def validation_loss(model: Any, blocks: Any, batch_size: int) -> float:
    """The held-out blocks' token-weighted loss, on the unwrapped network (rank 0 alone: a
    DDP forward would wait for the other ranks)."""
    import torch

    alone = unwrapped_model(model)
    alone.network.eval()
    scorer = alone.scorer()
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            scorer.add(alone.batch({"input_ids": blocks[start : start + batch_size]}))
    alone.network.train()
    return scorer.metrics()["loss"] if len(blocks) else 0.0
