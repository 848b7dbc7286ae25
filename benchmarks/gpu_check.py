"""DistLM's GPU code paths on one real GPU, without Ray: one script, figures printed, a
non-zero exit naming every check that failed.

    PYTHONPATH=backend python3 benchmarks/gpu_check.py [--device cuda|cpu] [--epochs 12]

1. The device: its name, torch's and CUDA's versions.
2. Strategy split: the project's own ``SplitWorker`` (its ``__init__`` device choice,
   ``run``/``train``, ``_train_step``, validation scoring, checkpoints, the saved model) fed by
   the project's own ``BatchLoader``s through the project's ``BatchStream``, training the
   built-in digits dataset; it must reach >= 0.9 validation accuracy. Then the worker's own
   ``_train_step`` alone on batches already on the device (the trainer's ceiling).
3. NCCL: ``torch.distributed`` with backend "nccl", world size 1, an all_reduce on the GPU;
   then the project's ``DataParallelRank`` training loop for two steps of the built-in
   ``tiny-gpt2`` preset on ``stdlib-text``, its model wrapped in DistributedDataParallel over
   that NCCL group, so its gradients are all-reduced by NCCL (each bucket's all-reduce counted).

Ray is not needed: the worker and the loop reach Ray only through ``ray.get_actor`` (the job's
runner) and ``ray.get``. A tiny stand-in module named ``ray`` is put in ``sys.modules`` by this
script (nowhere else) to answer those calls locally: events go to a list, ``.remote`` calls run
on threads (one per loader, as an actor serves one call at a time). ``--device cpu`` is a dry
run on the CPU (gloo instead of NCCL).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
import types
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))

FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"  [{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILURES.append(f"{name}{': ' + detail if detail else ''}")
    return ok


# -- the stand-in for Ray (only the calls the worker and the loop make) --------------------
class Runner:
    """The job's runner actor: records events, never asks to cancel."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.emit = _Method(self.events.append)
        self.emit_all = _Method(self.events.extend)  # the split trainer's outbox sends lists
        self.cancel_requested = _Method(lambda: False)


class _Method:
    """``actor.method.remote(...)``: runs now, returns the value as its 'ObjectRef'."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class LocalActor:
    """A loader 'actor': its methods' ``.remote`` run on its own thread, one call at a time,
    and return a Future (``ray.get`` below waits for it)."""

    def __init__(self, instance: Any) -> None:
        self._instance = instance
        self._pool = ThreadPoolExecutor(max_workers=1)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._instance, name)
        pool = self._pool

        class _Remote:
            @staticmethod
            def remote(*args: Any, **kwargs: Any) -> Future:
                return pool.submit(method, *args, **kwargs)

        return _Remote()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class TrainState:
    allreduce_calls = 0
    wrapped: Any = None


def install_ray_stand_in(runner: Runner, device: Any) -> None:
    import torch

    ray = types.ModuleType("ray")
    exceptions = types.ModuleType("ray.exceptions")
    for name in ("GetTimeoutError", "RayActorError", "RayTaskError", "ObjectLostError"):
        setattr(exceptions, name, type(name, (Exception,), {}))

    def get(ref: Any, timeout: float | None = None) -> Any:
        if isinstance(ref, list):
            return [get(r, timeout) for r in ref]
        return ref.result(timeout=timeout) if isinstance(ref, Future) else ref

    def get_actor(name: str, namespace: str | None = None) -> Runner:
        return runner

    class CountingDDP(torch.nn.parallel.DistributedDataParallel):
        """DDP as the rank builds it, with each gradient bucket's all-reduce counted."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            super().__init__(*args, **kwargs)

            def counting_hook(state, bucket):  # type: ignore[no-untyped-def]  (DDP checks them)
                TrainState.allreduce_calls += 1
                return allreduce_hook(state, bucket)

            self.register_comm_hook(None, counting_hook)
            TrainState.wrapped = self

    torch.nn.parallel.DistributedDataParallel = CountingDDP  # type: ignore[misc]
    ray.get = get  # type: ignore[attr-defined]
    ray.get_actor = get_actor  # type: ignore[attr-defined]
    ray.exceptions = exceptions  # type: ignore[attr-defined]
    ray.__distlm_stand_in__ = True  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "ray": ray,
            "ray.exceptions": exceptions,
        }
    )
    del torch


# -- 1. the device --------------------------------------------------------------------------
def device_info(args: argparse.Namespace) -> Any:
    import torch

    print("== 1. device", flush=True)
    print(
        f"  torch {torch.__version__}, CUDA (torch built with) {torch.version.cuda}, "
        f"cuda available: {torch.cuda.is_available()}"
    )
    if args.device == "cuda":
        if not check("CUDA available", torch.cuda.is_available()):
            return None
        print(f"  device: {torch.cuda.get_device_name(0)}", flush=True)
        try:
            props = torch.cuda.get_device_properties(0)
            print(
                f"  {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
                f"capability {props.major}.{props.minor}, cuDNN {torch.backends.cudnn.version()}, "
                f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
            )
        except Exception as error:  # the extras only: the name above is what counts
            print(f"  (device details unavailable: {error})")
        return torch.device("cuda", 0)
    print("  device: CPU (dry run)")
    return torch.device("cpu")


# -- 2. split ---------------------------------------------------------------------------------
def split_check(args: argparse.Namespace, device: Any, runner: Runner, storage: Path) -> None:
    import numpy as np
    import torch

    from protocol.events import MetricEvent
    from protocol.run import DataRequest, ModelRequest, WorkerPlan
    from protocol.strategies.split import parse_split_settings
    from ray_module.contract import runner_name
    from ray_module.strategies.split import worker as worker_module
    from ray_module.strategies.split.loader import BatchLoader, LoaderConfig
    from ray_module.strategies.split.results import InferenceSettings
    from ray_module.strategies.split.samples import part_ids, split_ids
    from ray_module.strategies.split.worker import DataPlan, SplitWorker, WorkerConfig

    print(
        f"\n== 2. split: SplitWorker on {device.type}, digits, {args.model}, "
        f"batch {args.batch_size}, {args.epochs} epochs, {args.loaders} loaders",
        flush=True,
    )
    job_id = 9001
    model = ModelRequest("classifier", args.model)
    data = DataRequest("builtin", "digits")
    settings = parse_split_settings(
        {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "augment": args.augment,
            "max_in_flight_batches": 8,
            "prefetch_batches": 2,
        }
    )
    trainer = WorkerPlan(1, 1 if device.type == "cuda" else 0, 4.0, 8.0)
    plans = tuple(WorkerPlan(1, 0, 1.0, 1.0, role="loader") for _ in range(args.loaders))
    loaders = [
        LocalActor(BatchLoader(LoaderConfig(1, "classifier", data, model, settings.seq_len, 0)))
        for _ in plans
    ]
    shape = loaders[0]._instance.describe()  # what run.data_shape asks every loader
    train_ids, validation_ids = split_ids(shape.size, settings.validation_split, settings.seed)
    data_plan = DataPlan(
        shape=shape,
        train_ids=train_ids,
        validation_ids=validation_ids,
        task_ids=part_ids(shape.size, None, settings.validation_split, settings.seed),
    )
    config = WorkerConfig(
        job_id=job_id,
        runner=runner_name(job_id),
        task="train",
        model=model,
        model_type="classifier",
        settings=settings,
        inference=InferenceSettings.of({}),
        job_dir=str(storage / "jobs" / str(job_id)),
        data_root=None,
        publish=None,
        trainer=trainer,
        loaders=plans,
    )
    worker = SplitWorker(config)
    check("SplitWorker chose the device", worker.device.type == device.type, str(worker.device))
    first = len(runner.events)
    started = time.perf_counter()
    try:
        outcome = worker.run(loaders, data_plan)
    finally:
        for loader in loaders:
            loader.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    events = runner.events[first:]
    metrics = [e.values for e in events if isinstance(e, MetricEvent)]
    flow = [m for m in metrics if "samples_per_s" in m]
    steady = flow[1:] or flow
    accuracies = [m["validation_accuracy"] for m in metrics if "validation_accuracy" in m]
    steps = outcome.get("step", 0)
    trained = steps * args.batch_size
    print(
        f"  steps {steps}, wall {wall:.2f} s (validation, checkpoints included), "
        f"~{trained / wall:.0f} train samples/s end to end"
    )
    if steady:
        print(
            f"  pipeline samples/s (median of flow figures): "
            f"{statistics.median(f['samples_per_s'] for f in steady):.0f}; data-wait fraction "
            f"{statistics.median(f['data_wait_fraction'] for f in steady):.2f}"
        )
        gpu = [f["trainer_gpu_utilisation"] for f in steady if "trainer_gpu_utilisation" in f]
        if gpu:
            print(f"  trainer GPU utilisation (median): {statistics.median(gpu):.2f}")
    print("  validation accuracy by epoch: " + ", ".join(f"{a:.3f}" for a in accuracies))
    check(
        "split trained every step",
        steps == settings.total_steps(-(-len(train_ids) // args.batch_size)),
        f"{steps} steps",
    )
    final = accuracies[-1] if accuracies else 0.0
    check("split validation accuracy >= 0.9", final >= 0.9, f"{final:.4f}")
    model_dir = Path(config.job_dir) / "model"
    check(
        "split saved its model and checkpoint",
        (model_dir / "model.safetensors").exists()
        and (Path(config.job_dir) / "checkpoint").exists(),
        str(model_dir),
    )

    # The trainer's own step alone, on batches already on the device: its ceiling.
    model = worker._load_model()
    on = {p.device.type for p in model.network.parameters()}
    check("split model parameters on the device", on == {device.type}, str(on))
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=settings.rate_for("classifier"))
    rng = np.random.default_rng(0)
    for size in (args.batch_size, 1024):
        ids = rng.choice(train_ids, size=size)
        labelled = loaders[0]._instance.labelled
        host = {"features": labelled.features[ids], "labels": labelled.labels[ids]}
        batch = worker._on_device(model, host)  # on the device once, as a ceiling
        worker._on_device = lambda _model, placed: placed
        for _ in range(10):
            worker._train_step(model, optimizer, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic, n = time.perf_counter(), 200
        for _ in range(n):
            loss = worker._train_step(model, optimizer, batch)  # float(): syncs every step
        seconds = time.perf_counter() - tic
        del worker._on_device
        print(
            f"  SplitWorker._train_step alone, batch {size} on {device.type}: "
            f"{n * size / seconds:.0f} samples/s ({seconds / n * 1e3:.3f} ms/step, loss {loss:.2e})"
        )
    if device.type == "cuda":
        b = worker_module._numpy(torch.ones(3, dtype=torch.bfloat16, device=device))
        check(
            "bf16 CUDA tensor -> float32 numpy (checkpoint path)",
            b.dtype == np.float32,
            str(b.dtype),
        )


# -- 3. NCCL and data_parallel ------------------------------------------------------------------
def nccl_check(args: argparse.Namespace, device: Any, runner: Runner, storage: Path) -> None:
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    print(f"\n== 3. torch.distributed, backend {backend}, world size 1", flush=True)
    init_file = storage / "dist-init"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    from datetime import timedelta

    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=120),
    )
    try:
        print(
            f"  initialised: backend {dist.get_backend()}, rank {dist.get_rank()} of "
            f"{dist.get_world_size()}"
        )
        x = torch.arange(1, 1 + 2**20, dtype=torch.float32, device=device)
        expected = float(x.sum())
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        if device.type == "cuda":
            torch.cuda.synchronize()
        check(
            f"{backend} all_reduce(SUM) of 2^20 floats on {x.device}",
            float(x.sum()) == expected and x.device.type == device.type,
            f"sum {float(x.sum()):.6g} (expected {expected:.6g})",
        )
        y = torch.full((1024, 1024), 3.0, device=device, dtype=torch.bfloat16)
        dist.all_reduce(y, op=dist.ReduceOp.AVG if backend == "nccl" else dist.ReduceOp.SUM)
        check(f"{backend} all_reduce of a bf16 tensor", bool((y == 3.0).all()), f"{y[0, 0].item()}")
        if device.type == "cuda":  # bandwidth of a 256 MiB all_reduce (world 1: the local path)
            big = torch.ones(64 * 2**20, device=device)
            dist.all_reduce(big)
            torch.cuda.synchronize()
            tic = time.perf_counter()
            for _ in range(10):
                dist.all_reduce(big)
            torch.cuda.synchronize()
            print(f"  256 MiB all_reduce: {(time.perf_counter() - tic) / 10 * 1e3:.2f} ms")
        data_parallel_check(device, runner, storage)
    finally:
        dist.destroy_process_group()


def data_parallel_check(device: Any, runner: Runner, storage: Path) -> None:
    import math

    import torch

    from protocol.events import CheckpointEvent, MetricEvent
    from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan
    from ray_module.strategies.data_parallel.checkpoint import load_checkpoint
    from ray_module.strategies.data_parallel.rank import DataParallelRank, RankConfig
    from ray_module.strategies.data_parallel.run import settings_of

    print("\n== 3b. DataParallelRank: tiny-gpt2 on stdlib-text, 2 steps, DDP", flush=True)
    job_id = 9002
    gpu = 1 if device.type == "cuda" else 0
    config = RunConfig(
        job_id=job_id,
        request=JobRequest(
            strategy="data_parallel",
            model=ModelRequest("simple_transformer", "tiny-gpt2"),
            data=DataRequest("builtin", "stdlib-text"),
            knobs={"max_steps": 2, "batch_size": 8, "seq_len": 64},
        ),
        workers=(WorkerPlan(1, gpu, 2.0, 4.0),),
        storage_path=str(storage),
    )
    rank = DataParallelRank(RankConfig(config, settings_of(config), 0, config.workers[0]))
    first = len(runner.events)
    tic = time.perf_counter()
    last_step = rank._train()  # in the process group made above, as a rank of one
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - tic
    events = runner.events[first:]
    metrics = [e.values for e in events if isinstance(e, MetricEvent)]
    losses = [m["loss"] for m in metrics if "loss" in m]
    wrapped = TrainState.wrapped
    where = {p.device.type for p in wrapped.parameters()} if wrapped is not None else set()
    print(f"  wall {wall:.2f} s (data packing, model build, validation, checkpoint included)")
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    validation = [round(m["validation_loss"], 4) for m in metrics if "validation_loss" in m]
    print(
        f"  step losses: {', '.join(f'{x:.4f}' for x in losses)}; tokens/s per step: "
        f"{', '.join(f'{r:.0f}' for r in rates)}; validation loss: {validation}"
    )
    check(
        "data_parallel model in DDP on the device",
        isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) and where == {device.type},
        f"{type(wrapped).__name__}, parameters on {where}",
    )
    check(
        "data_parallel ran 2 optimiser steps with finite loss",
        len(losses) == 2 and all(math.isfinite(x) for x in losses),
        str(losses),
    )
    check(
        f"DDP gradient all-reduces through {torch.distributed.get_backend()}",
        TrainState.allreduce_calls >= 2,
        f"{TrainState.allreduce_calls} bucket all-reduces",
    )
    saved = load_checkpoint(Path(config.job_dir) / "checkpoint")
    check(
        "data_parallel checkpoint at step 2 and final model saved",
        saved is not None
        and saved[1] == 2
        and (Path(config.job_dir) / "model").exists()
        and any(isinstance(e, CheckpointEvent) for e in events),
        str(saved),
    )
    check("data_parallel's rank returned its last step", last_step == 2, str(last_step))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--model", default="cnn", choices=("mlp", "cnn"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loaders", type=int, default=2)
    parser.add_argument("--augment", action="store_true", help="loaders augment the images")
    args = parser.parse_args()

    started = time.perf_counter()
    device = device_info(args)
    if device is not None:
        import torch

        runner = Runner()
        install_ray_stand_in(runner, device)
        print("  (Ray: the script's stand-in module, not Ray)")
        if device.type == "cpu":
            torch.set_num_threads(4)
        with tempfile.TemporaryDirectory() as tmp:
            for name, fn in (("split", split_check), ("nccl/data_parallel", nccl_check)):
                try:
                    fn(args, device, runner, Path(tmp))
                except Exception as error:  # a check that crashed is a failed check
                    traceback.print_exc()
                    check(f"{name} ran", False, f"{type(error).__name__}: {error}")
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if FAILURES:
        print(f"FAILED {len(FAILURES)} check(s):")
        for failure in FAILURES:
            print(f"  - {failure}")
        return 1
    print("ALL CHECKS PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
