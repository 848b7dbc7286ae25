"""Strategy split against a torch DataLoader with as many worker processes as the split job
has loader CPUs, measured the same way on both sides, in one run: training samples per
second end to end (first batch asked for -> last step done, every epoch's validation and
checkpoint included; validation samples not counted) and the whole job's wall time (start
included). Baseline and split runs alternate, ``--repeat`` rounds; tables show medians.
Nothing is asserted: figures and ratios (and ``results.report`` lines for ``make bench``).

    PYTHONPATH=backend .venv/bin/python benchmarks/split.py [--models mlp,cnn]
        [--epochs N] [--batch-size N] [--loaders 1,2] [--repeat 3] [--gpu] [--two-hosts]

Defaults per model: mlp batch 256, 16 epochs (augmenting costs more than a step: data-bound);
cnn batch 64, 10 epochs (a step costs more: trainer-bound). The preprocessing is the split
loaders' augmentation (random affine shifts, rotations and noise on every image, scipy's
``affine_transform``), real CPU per batch. The pipeline runs through the real runner actor
on a local Ray (one DistLM node), exactly as a job does; ``--gpu`` asks for a GPU for the
trainer (on a machine that has one).

The baseline is what one writes by hand on one machine: ``DataLoader(num_workers=N,
persistent_workers=True, prefetch_factor=8 // N)`` (as many batches in flight as the split
job's bound) with the augmentation in its ``collate_fn``, the same network
(same initialisation), AdamW and learning rate, the same held-out validation after every
epoch and a ``torch.save`` checkpoint after every epoch, in one process with one torch
thread (the split trainer's slot is one core). It runs on the same machine, with Ray's own
processes started and settled, and its workers have each made a batch before its clock
starts.

``--two-hosts`` (root: Linux network namespaces, ``tests/hosts``): the split job through
the real gateway and node agents, its trainer on one host and its loaders (2 CPUs) on
another, against the same DataLoader with 2 workers; every host shares this machine's cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.hosts

import numpy as np
from benchmarks.results import report

from protocol.events import MetricEvent, StatusEvent
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan
from ray_module.runner.client import fetch_events, launch_runner, stop_runner

SEED = 0
VALIDATION_SPLIT = 0.1  # split's default
VALIDATION_BATCH = 64  # split's inference batch size
DEFAULTS = {"mlp": (256, 16), "cnn": (64, 10)}  # batch size, epochs
IN_FLIGHT = 8  # split's max_in_flight_batches; the DataLoader's workers prefetch as many


def knobs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "augment": True,
        "max_in_flight_batches": IN_FLIGHT,
        "prefetch_batches": 2,
        "seed": SEED,
    }


def pipeline_run(
    args: argparse.Namespace, loaders: int, storage: Path, job_id: int
) -> dict[str, float]:
    """One split job through the runner: the trainer's own end-to-end figure (first batch
    asked for -> last step done) and the runner's times of its events."""
    trainer = WorkerPlan(1, 1 if args.gpu else 0, 1.0, 1.0)
    loader = WorkerPlan(1, 0, float(loaders), 1.0, role="loader")
    config = RunConfig(
        job_id=job_id,
        request=JobRequest(
            strategy="split",
            model=ModelRequest("classifier", args.model),
            data=DataRequest("builtin", "digits"),
            knobs=knobs(args),
        ),
        workers=(trainer, loader),
        storage_path=str(storage),
    )
    started = time.time()
    launch_runner(config)
    seen: list = []
    try:
        while True:
            seen.extend(fetch_events(job_id, len(seen)) or [])
            ends = [
                r for r in seen if isinstance(r.event, StatusEvent) and r.event.state.is_terminal()
            ]
            if ends:
                break
            time.sleep(0.2)
    finally:
        stop_runner(job_id)
    if ends[-1].event.state.value != "succeeded":
        raise SystemExit(f"the split run failed: {ends[-1].event.reason}")
    metrics = [r for r in seen if isinstance(r.event, MetricEvent)]
    # Step 0 is sent just before the first batch is asked for; the last step's event once
    # the step (and its epoch's validation) is done.
    described = next(r for r in metrics if r.event.step == 0 and "total_steps" in r.event.values)
    total = described.event.values["total_steps"]
    last = next(r for r in metrics if r.event.step == total)
    flow = [r.event.values for r in metrics if "data_wait_fraction" in r.event.values]
    runner_window = last.at - described.at
    # The trainer's own clock; the runner's times of its events where it has none (the code
    # before it reported train_s, for measuring before and after).
    trained = described.event.values["train_samples"] * args.epochs
    return {
        "samples_per_s": last.event.values.get("train_samples_per_s", trained / runner_window),
        "window_s": last.event.values.get("train_s", runner_window),
        "runner_window_s": runner_window,
        "whole_s": ends[-1].at - started,
        "data_wait_fraction": statistics.mean(f["data_wait_fraction"] for f in flow),
        "validation_accuracy": last.event.values["validation_accuracy"],
    }


class Baseline:
    """The hand-written single-machine loop, its DataLoader workers started and warm."""

    def __init__(self, args: argparse.Namespace, workers: int) -> None:
        import torch
        from torch.utils.data import DataLoader, Dataset

        from ray_module.data.examples import digits
        from ray_module.strategies.split.loader import augment_images
        from ray_module.strategies.split.samples import split_ids

        self.args = args
        self.created = time.perf_counter()
        data = digits()
        train, validation = split_ids(len(data), VALIDATION_SPLIT, SEED)

        class Rows(Dataset):
            def __init__(self, ids: np.ndarray) -> None:
                self.ids = ids

            def __len__(self) -> int:
                return len(self.ids)

            def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
                sample = self.ids[index]
                return data.features[sample], int(data.labels[sample])

        def augmented(items: list[tuple[np.ndarray, int]]) -> tuple[Any, Any]:
            """The loaders' own batch augmentation, so both feeds do the same CPU work."""
            images = np.stack([image for image, _ in items])
            labels = torch.tensor([label for _, label in items])
            rng = np.random.default_rng()
            return torch.from_numpy(augment_images(images, rng).astype(np.float32)), labels

        def plain(items: list[tuple[np.ndarray, int]]) -> tuple[Any, Any]:
            images = np.stack([image for image, _ in items]).astype(np.float32)
            return torch.from_numpy(images), torch.tensor([label for _, label in items])

        # As many batches in flight as the split job's bound (max_in_flight_batches).
        common = {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "prefetch_factor": max(1, IN_FLIGHT // workers) if workers else None,
        }
        self.train_loader = DataLoader(
            Rows(train), batch_size=args.batch_size, shuffle=True, collate_fn=augmented, **common
        )
        self.validation_loader = DataLoader(
            Rows(validation), batch_size=VALIDATION_BATCH, collate_fn=plain, **common
        )
        self.workers = workers
        self._warm()

    def _warm(self) -> None:
        """Each worker makes a batch of each loader (processes started, imports done); the
        persistent workers then serve every timed epoch."""
        for loader in (self.train_loader, self.validation_loader):
            batches = iter(loader)
            for _ in range(max(1, min(self.workers, len(loader)))):
                next(batches)
            del batches

    def run(self, storage: Path) -> dict[str, float]:
        import torch

        from ray_module.models.contract import DataFit
        from ray_module.models.registry import load_model

        args = self.args
        device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(1)
        fit = DataFit(input_shape=(1, 8, 8), num_classes=10, class_names=tuple(map(str, range(10))))
        network = load_model(ModelRequest("classifier", args.model), fit=fit, seed=SEED).network
        network.to(device)
        optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
        waited = 0.0
        samples = 0
        started = time.perf_counter()  # the first batch is asked for next
        for epoch in range(args.epochs):
            network.train()
            batches = iter(self.train_loader)
            while True:
                tic = time.perf_counter()
                try:
                    features, labels = next(batches)
                except StopIteration:
                    break
                waited += time.perf_counter() - tic
                loss = torch.nn.functional.cross_entropy(
                    network(features.to(device)), labels.to(device)
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                float(loss.detach())  # split's trainer reports each step's loss
                samples += len(labels)
            accuracy = self._validate(network, device)
            if epoch < args.epochs - 1:  # split saves the last one after its last step
                self._checkpoint(network, optimizer, epoch, storage)
        window = time.perf_counter() - started
        self._checkpoint(network, optimizer, args.epochs, storage)
        torch.save(network.state_dict(), storage / "model.pt")
        return {
            "samples_per_s": samples / window,
            "window_s": window,
            "whole_s": time.perf_counter() - self.created,
            "data_wait_fraction": waited / window,
            "validation_accuracy": accuracy,
        }

    def _validate(self, network: Any, device: Any) -> float:
        import torch

        network.eval()
        right = total = 0
        with torch.no_grad():
            for features, labels in self.validation_loader:
                logits = network(features.to(device))
                right += int((logits.argmax(1).cpu() == labels).sum())
                total += len(labels)
        return right / total

    @staticmethod
    def _checkpoint(network: Any, optimizer: Any, epoch: int, storage: Path) -> None:
        import torch

        state = {"model": network.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save({**state, "epoch": epoch}, storage / "checkpoint.pt")


def dataloader_run(args: argparse.Namespace, workers: int, storage: Path) -> dict[str, float]:
    baseline = Baseline(args, workers)
    try:
        return baseline.run(storage)
    finally:
        del baseline  # its persistent workers end with it


def settle(timeout_s: float = 60.0, quiet: float = 0.05) -> float:
    """Wait until this process's descendants (Ray's GCS, raylet, prestarted workers, ...)
    together use under ``quiet`` of a core over a second; the seconds waited."""
    tick = os.sysconf("SC_CLK_TCK")
    began = time.perf_counter()

    def descendants_cpu() -> float:
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
        mine: set[int] = set()
        frontier = {os.getpid()}
        while frontier:
            frontier = {p for p, parent in parents.items() if parent in frontier} - mine
            mine |= frontier
        return sum(cpu[p] for p in mine)

    before = descendants_cpu()
    while time.perf_counter() - began < timeout_s:
        time.sleep(1.0)
        now = descendants_cpu()
        if now - before < quiet:
            break
        before = now
    return time.perf_counter() - began


def for_model(args: argparse.Namespace, model: str) -> argparse.Namespace:
    batch_size, epochs = DEFAULTS[model]
    return argparse.Namespace(
        **{
            **vars(args),
            "model": model,
            "batch_size": args.batch_size or batch_size,
            "epochs": args.epochs or epochs,
        }
    )


def one_host(args: argparse.Namespace) -> None:
    import ray

    from ray_module.cluster import ClusterConfig, connect

    counts = [int(n) for n in args.loaders.split(",")]
    # A local Ray of its own, started as a DistLM node starts one (its workers inherit the
    # code's path: no job-level runtime_env, so Ray's prestarted workers serve the actors).
    connect(
        ClusterConfig(
            num_cpus=max(counts) + 1,
            num_gpus=1 if args.gpu else 0,
            resources={"distlm_node_1": 1000},
        )
    )
    print(f"Ray's processes settled after {settle():.1f} s", flush=True)
    job_id = 7000
    tables = []
    with tempfile.TemporaryDirectory() as storage:
        for model in args.models.split(","):
            margs = for_model(args, model)
            runs: dict[tuple[str, int], list[dict[str, float]]] = {}
            for round_ in range(args.repeat):
                for loaders in counts:  # baseline and split alternate
                    for feed in ("dataloader", "split"):
                        settle(timeout_s=15)  # the last run's processes have ended
                        if feed == "dataloader":
                            figures = dataloader_run(margs, loaders, Path(storage))
                        else:
                            job_id += 1
                            figures = pipeline_run(margs, loaders, Path(storage), job_id)
                        runs.setdefault((feed, loaders), []).append(figures)
                        _progress(f"{model}, round {round_ + 1}, {feed}, {loaders}", figures)
            tables.append(
                (margs, [(n, runs[("dataloader", n)], runs[("split", n)]) for n in counts])
            )
    ray.shutdown()
    for margs, rows in tables:
        print_table(margs, rows, "split, {n} loader{s}")


def two_hosts(args: argparse.Namespace) -> None:
    """The split job across two namespace hosts against the same DataLoader (2 workers)."""
    from tests.hosts.platform import running_platform, wait_until_finished

    tables = []
    with running_platform(Path(tempfile.mkdtemp(prefix="distlm-split-"))) as platform:
        for model in args.models.split(","):
            margs = for_model(args, model)
            runs: dict[str, list[dict[str, float]]] = {"dataloader": [], "split": []}
            for round_ in range(args.repeat):
                with tempfile.TemporaryDirectory() as storage:
                    figures = dataloader_run(margs, 2, Path(storage))
                runs["dataloader"].append(figures)
                _progress(f"{model}, round {round_ + 1}, dataloader, 2", figures)
                figures = hosts_run(platform, margs, wait_until_finished)
                runs["split"].append(figures)
                _progress(f"{model}, round {round_ + 1}, split on two hosts, 2", figures)
            tables.append((margs, [(2, runs["dataloader"], runs["split"])]))
    for margs, rows in tables:
        print_table(margs, rows, "split, trainer and {n} loaders on two hosts")


def hosts_run(platform: Any, args: argparse.Namespace, finished: Any) -> dict[str, float]:
    user = platform.user
    body = {
        "model_config": {"type": "classifier", "model_name": args.model},
        "data_config": {"data_source": "builtin", "dataset_name": "digits"},
        "training_config": {
            "strategy": "split",
            **knobs(args),
            "loader": {"cpu_cores": 2, "memory": 0.5},
        },
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.5},
    }
    job = user.call("POST", "/jobs/submit", json=body)
    placement = None
    while placement is None and user.finished(job["id"]) is None:
        placement = user.job(job["id"])["placement"]  # cleared once the job has ended
        time.sleep(0.2)
    done = finished(user, job["id"])
    if done["status"] != "succeeded":
        raise SystemExit(f"the split job failed: {done['status_reason']}")
    if len({slot["node_id"] for slot in placement or []}) != 2:
        raise SystemExit(f"the trainer and the loaders were not on two hosts: {placement}")
    points = user.call("GET", f"/metrics/training/{job['id']}", params={"limit": 5000})
    series = points["series"]
    described = next(p for p in series if p["step"] == 0 and "total_steps" in p["values"])
    last = next(p for p in series if p["step"] == described["values"]["total_steps"])["values"]
    flow = [p["values"] for p in series if "data_wait_fraction" in p["values"]]
    if "train_s" not in last:  # code before the trainer reported it: the gateway's times
        window = _at(_last_point_at(series)) - _at(described["recorded_at"])
        trained = described["values"]["train_samples"] * args.epochs
        last = {**last, "train_s": window, "train_samples_per_s": trained / window}
    return {
        "samples_per_s": last["train_samples_per_s"],
        "window_s": last["train_s"],
        "whole_s": _at(done["finished_at"]) - _at(done["created_at"]),
        "data_wait_fraction": statistics.mean(f["data_wait_fraction"] for f in flow),
        "validation_accuracy": last["validation_accuracy"],
    }


def _last_point_at(series: list[dict]) -> str:
    return max(p["recorded_at"] for p in series)


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _progress(what: str, figures: dict[str, float]) -> None:
    print(
        f"{what} loader CPU(s): {figures['samples_per_s']:.0f} train samples/s over "
        f"{figures['window_s']:.2f} s"
        + (f" (runner: {figures['runner_window_s']:.2f} s)" if "runner_window_s" in figures else "")
        + f", whole {figures['whole_s']:.2f} s",
        flush=True,
    )


def print_table(args: argparse.Namespace, rows: list, split_name: str) -> None:
    import torch

    card = torch.cuda.get_device_name(0) if args.gpu and torch.cuda.is_available() else "CPU"
    print(f"\ndigits, {args.model}, batch {args.batch_size}, {args.epochs} epochs, augmentation"
          f" on; trainer on {card}; medians of {args.repeat}\n")  # fmt: skip
    print("| loader CPUs | feed | train samples/s, end to end | vs DataLoader "
          "| first batch -> last step (s) | whole job (s) | data-wait fraction "
          "| val. accuracy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for loaders, base_runs, split_runs in rows:
        base, split = _medians(base_runs), _medians(split_runs)
        ratio = split["samples_per_s"] / base["samples_per_s"]
        plural = "s" * (loaders > 1)
        for name, f, versus in (
            (f"DataLoader, {loaders} worker{plural}", base, "1.00x"),
            (split_name.format(n=loaders, s=plural), split, f"{ratio:.2f}x"),
        ):
            print(
                f"| {loaders} | {name} | {f['samples_per_s']:,.0f} | {versus} | "
                f"{f['window_s']:.2f} | {f['whole_s']:.1f} | {f['data_wait_fraction']:.2f} | "
                f"{f['validation_accuracy']:.3f} |"
            )
        report(
            "split",
            f"{args.model}, {split_name.format(n=loaders, s=plural)}: train samples/s end to end",
            split["samples_per_s"],
            unit="samples/s",
            baseline=base["samples_per_s"],
            baseline_name=f"DataLoader, {loaders} worker{plural}",
            aim=">= 1.0",
        )
        report(
            "split",
            f"{args.model}, {split_name.format(n=loaders, s=plural)}: whole job",
            split["whole_s"],
            unit="s",
            baseline=base["whole_s"],
            baseline_name=f"DataLoader, {loaders} worker{plural}",
        )


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help="mlp, cnn or both")
    parser.add_argument("--epochs", type=int, default=0, help="0: the model's default")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the model's default")
    parser.add_argument("--loaders", default="1,2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="the trainer asks for a GPU")
    parser.add_argument("--two-hosts", action="store_true", help="root: namespace hosts")
    args = parser.parse_args()
    if any(m not in DEFAULTS for m in args.models.split(",")):
        parser.error(f"--models: choose from {', '.join(DEFAULTS)}")
    import torch  # imported before any clock starts, as a job's processes have it

    del torch
    if args.two_hosts:
        two_hosts(args)
    else:
        one_host(args)


if __name__ == "__main__":
    main()
