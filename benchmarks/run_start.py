"""How long a two-step run of each mode takes from launch to its first step and to its end,
on a two-node Ray cluster on this machine, through the real runner actor; and data_parallel's
own start against the same ranks' loop under Ray Train's TorchTrainer (the baseline,
``torch_trainer_baseline.py``), both called the same way in the same process.

    PYTHONPATH=backend .venv/bin/python benchmarks/run_start.py [--repeats 2]

Each mode's first run on a fresh cluster also pays for starting Ray's worker processes; the
figures are the mean of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.agent_pool

from benchmarks.results import report

from protocol.events import MetricEvent, StatusEvent
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan

ROOT = Path(__file__).resolve().parent.parent

TEXT = DataRequest("builtin", "stdlib-text", max_samples=60)
DIGITS = DataRequest("builtin", "digits", max_samples=400)
TWO_NODES = (WorkerPlan(1, 0, 1.0, 0.5), WorkerPlan(2, 0, 1.0, 0.5))
MODES = {
    "data_parallel": (
        ModelRequest("simple_transformer", "tiny-gpt2"),
        TEXT,
        {"batch_size": 4, "seq_len": 32, "max_steps": 2},
        TWO_NODES,
    ),
    "es": (
        ModelRequest("char_rnn", "rnn"),
        TEXT,
        {"population": 8, "seq_len": 32, "steps": 2},
        TWO_NODES,
    ),
    "fedavg": (ModelRequest("classifier", "mlp"), DIGITS, {"clients": 2, "rounds": 2}, TWO_NODES),
    "split": (
        ModelRequest("classifier", "mlp"),
        DIGITS,
        {"batch_size": 32, "max_steps": 2},
        (WorkerPlan(1, 0, 1.0, 0.5), WorkerPlan(2, 0, 1.0, 0.5, role="loader")),
    ),
}
job_ids = count(70_000)


def timed_run(mode: str) -> tuple[float, float]:
    """Seconds from launch to the first step, and to the final status."""
    from ray_module.runner.client import fetch_events, launch_runner, stop_runner

    model, data, knobs, workers = MODES[mode]
    request = JobRequest(strategy=mode, model=model, data=data, knobs=knobs)
    config = RunConfig(next(job_ids), request, workers, tempfile.mkdtemp(prefix="run-start-"))
    started = time.perf_counter()
    launch_runner(config)
    first_step = None
    seen = 0
    try:
        while True:
            for recorded in fetch_events(config.job_id, seen) or []:
                seen += 1
                event = recorded.event
                if isinstance(event, MetricEvent) and event.step > 0 and first_step is None:
                    first_step = time.perf_counter() - started
                if isinstance(event, StatusEvent) and event.state.is_terminal():
                    assert event.state.value == "succeeded", event
                    return first_step or 0.0, time.perf_counter() - started
            time.sleep(0.1)
    finally:
        stop_runner(config.job_id)


def mean(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(r[0] for r in runs) / len(runs), sum(r[1] for r in runs) / len(runs)


def data_parallel_config() -> RunConfig:
    model, data, knobs, workers = MODES["data_parallel"]
    request = JobRequest(strategy="data_parallel", model=model, data=data, knobs=knobs)
    return RunConfig(next(job_ids), request, workers, tempfile.mkdtemp(prefix="run-start-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(ROOT / "backend")  # the cluster's workers import our code
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray-", dir="/tmp"))

    import ray
    from benchmarks.torch_trainer_baseline import run_ours, run_with_torch_trainer, timed
    from tests.agent_pool import two_machine_cluster
    from tests.conftest import free_port

    cluster, _ = two_machine_cluster(free_port(), log_to_driver=False)
    try:
        figures = {mode: mean([timed_run(mode) for _ in range(args.repeats)]) for mode in MODES}
        # Alternated, so that neither side always runs on a warmer machine.
        baseline, ours = [], []
        for _ in range(args.repeats):
            baseline.append(timed(run_with_torch_trainer, data_parallel_config()))
            ours.append(timed(run_ours, data_parallel_config()))
    finally:
        ray.shutdown()
        cluster.shutdown()

    print(f"\n{'through the runner actor':<34} {'to first step':>14} {'to end':>8}")
    for mode, (first, end) in figures.items():
        print(f"{mode:<34} {first:>13.1f}s {end:>7.1f}s")
    print(f"\n{'data_parallel called directly':<34} {'to first step':>14} {'to end':>8}")
    rows = {"TorchTrainer (baseline)": mean(baseline), "own rank actors (ours)": mean(ours)}
    for label, (first, end) in rows.items():
        print(f"{label:<34} {first:>13.1f}s {end:>7.1f}s")
    (base_first, base_end), (our_first, our_end) = rows.values()
    print(
        f"\nbaseline / ours: to first step {base_first / our_first:.2f}x, "
        f"to end {base_end / our_end:.2f}x"
    )
    report("run_start", "data_parallel launch -> first step", our_first, unit="s",
           baseline=base_first, baseline_name="TorchTrainer")  # fmt: skip


if __name__ == "__main__":
    main()
