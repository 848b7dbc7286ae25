"""Strategy split against a plain DataLoader: the trainer's samples/s and data-wait fraction
when the data stage runs on 1 and on 2 CPU loader workers, against the same training fed by
a single-process ``torch.utils.data.DataLoader`` in one process, measured in one run.
Nothing is asserted: figures and ratios.

    PYTHONPATH=backend .venv/bin/python benchmarks/split.py [--epochs 6] [--model mlp|cnn]
        [--batch-size 64] [--loaders 1,2] [--gpu]

The preprocessing is the split loaders' augmentation (random affine shifts, rotations and
noise on every image, scipy's ``affine_transform``), which costs real CPU per batch. The
pipeline runs through the real runner actor on a local Ray (one DistLM node), exactly as a
job does; ``--gpu`` asks for a GPU for the trainer (on a machine that has one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))

import numpy as np

from protocol.events import MetricEvent, StatusEvent
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan
from ray_module.runner.client import fetch_events, launch_runner, stop_runner


def pipeline_run(
    args: argparse.Namespace, loaders: int, storage: Path, job_id: int
) -> dict[str, float]:
    """One split job through the runner: figures from its metric events."""
    trainer = WorkerPlan(1, 1 if args.gpu else 0, 1.0, 1.0)
    loader = WorkerPlan(1, 0, float(loaders), 1.0, role="loader")
    config = RunConfig(
        job_id=job_id,
        request=JobRequest(
            strategy="split",
            model=ModelRequest("classifier", args.model),
            data=DataRequest("builtin", "digits"),
            knobs={
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "augment": True,
                "max_in_flight_batches": 8,
                "prefetch_batches": 2,
            },
        ),
        workers=(trainer, loader),
        storage_path=str(storage),
    )
    started = time.perf_counter()
    launch_runner(config)
    seen: list = []
    try:
        while True:
            fresh = fetch_events(job_id, len(seen)) or []
            seen.extend(recorded.event for recorded in fresh)
            ends = [e for e in seen if isinstance(e, StatusEvent) and e.state.is_terminal()]
            if ends:
                break
            time.sleep(0.2)
    finally:
        stop_runner(job_id)
    wall = time.perf_counter() - started
    if ends[-1].state.value != "succeeded":
        raise SystemExit(f"the split run failed: {ends[-1].reason}")
    # Flow points after the first (the first interval includes the loaders' warm-up).
    flow = [e.values for e in seen if isinstance(e, MetricEvent) and "samples_per_s" in e.values]
    steady = flow[1:] or flow
    accuracy = [e.values["validation_accuracy"] for e in seen if isinstance(e, MetricEvent)
                and "validation_accuracy" in e.values][-1]  # fmt: skip
    figures = {
        "samples_per_s": statistics.median(f["samples_per_s"] for f in steady),
        "data_wait_fraction": statistics.median(f["data_wait_fraction"] for f in steady),
        "loader_cpu_utilisation": statistics.median(f["loader_cpu_utilisation"] for f in steady),
        "wall_s": wall,
        "validation_accuracy": accuracy,
    }
    gpu = [f["trainer_gpu_utilisation"] for f in steady if "trainer_gpu_utilisation" in f]
    if gpu:
        figures["trainer_gpu_utilisation"] = statistics.median(gpu)
    return figures


def dataloader_run(args: argparse.Namespace) -> dict[str, float]:
    """The same model, optimiser, batches and augmentation, fed by a single-process
    DataLoader (``num_workers=0``): decoding, augmenting and training take turns."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from ray_module.data.examples import digits
    from ray_module.models.classifier import ClassifierConfig, build_classifier
    from ray_module.strategies.split.loader import augment_images
    from ray_module.strategies.split.samples import split_ids

    data = digits()
    train, _ = split_ids(len(data), 0.1, 0)

    class Digits(Dataset):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
            sample = train[index]
            return data.features[sample], int(data.labels[sample])

    batch_number = iter(range(10**9))

    def augmented(items: list[tuple[np.ndarray, int]]) -> tuple:
        """The loaders' own batch augmentation, so both feeds do the same CPU work."""
        images = np.stack([image for image, _ in items])
        rng = np.random.default_rng((0, next(batch_number)))
        labels = torch.tensor([label for _, label in items])
        return torch.from_numpy(augment_images(images, rng)), labels

    device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)
    model = build_classifier(ClassifierConfig(args.model, (1, 8, 8), 10)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(
        Digits(), batch_size=args.batch_size, shuffle=True, num_workers=0, collate_fn=augmented
    )
    waited = trained = 0.0
    samples = 0
    started = time.perf_counter()
    for _ in range(args.epochs):
        batches = iter(loader)
        while True:
            tic = time.perf_counter()
            try:
                features, labels = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - tic
            tic = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(features.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trained += time.perf_counter() - tic
            samples += len(labels)
    wall = time.perf_counter() - started
    return {"samples_per_s": samples / wall, "data_wait_fraction": waited / wall, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loaders", default="1,2")
    parser.add_argument("--gpu", action="store_true", help="the trainer asks for a GPU")
    args = parser.parse_args()

    import ray

    from ray_module.cluster import RUNTIME_ENV

    counts = [int(n) for n in args.loaders.split(",")]
    ray.init(
        # A Ray of its own: a stale "current cluster" note of another Ray on this machine
        # would otherwise make ray.init try to join that one.
        address="local",
        num_cpus=max(counts) + 1,
        num_gpus=1 if args.gpu else 0,
        resources={"distlm_node_1": 1000},
        namespace="distlm",
        runtime_env=RUNTIME_ENV,
        include_dashboard=False,
    )
    rows = []
    baseline = dataloader_run(args)
    rows.append(("DataLoader, 1 process (baseline)", baseline))
    with tempfile.TemporaryDirectory() as storage:
        for number, loaders in enumerate(counts):
            figures = pipeline_run(args, loaders, Path(storage), 7000 + number)
            rows.append((f"split, {loaders} loader worker{'s' if loaders > 1 else ''}", figures))
    ray.shutdown()

    import torch

    card = torch.cuda.get_device_name(0) if args.gpu and torch.cuda.is_available() else "CPU"
    print(f"\ndigits, {args.model}, batch {args.batch_size}, {args.epochs} epochs, augmentation on;"
          f" trainer on {card}\n")  # fmt: skip
    print("| feed | trainer samples/s | vs baseline | data-wait fraction | loader CPU use "
          "| wall s | val. accuracy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, f in rows:
        print(
            f"| {name} | {f['samples_per_s']:.0f} | "
            f"{f['samples_per_s'] / baseline['samples_per_s']:.2f}x | "
            f"{f['data_wait_fraction']:.2f} | "
            f"{f.get('loader_cpu_utilisation', float('nan')):.2f} | "
            f"{f['wall_s']:.1f} | {f.get('validation_accuracy', float('nan')):.3f} |"
        )
        if "trainer_gpu_utilisation" in f:
            print(f"|   GPU utilisation | {f['trainer_gpu_utilisation']:.2f} |")


if __name__ == "__main__":
    main()
