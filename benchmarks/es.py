"""Evolution strategies: evaluations per second with 1 and 2 workers (the scaling ratio), and
what crosses the network per step against the model's parameter count.

    .venv/bin/python benchmarks/es.py [--steps 6 --population 256 --repeat 3]

Runs the real ``ESServer`` over ``ESWorker`` actors on a local Ray started the gateway's way,
char-RNN on stdlib-text. The first step of every run is a warm-up and is not counted. The
scaling runs alternate (1 worker, 2 workers, 1, 2, ...) so that a machine shared with other
work slows both alike; each pair's ratio and the ratio of the medians are reported.

Alternating with them, the machine's own scaling for the same work: the same evaluations
(``ESEvaluator.pair_losses``, the same pairs) in one plain process against two processes
doing half each, started together, with no Ray, server or step barrier. Two vCPUs of a
virtual machine need not give twice one (siblings of one physical core, a busy host): ES's
scaling can be read against what the machine allows for this very work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT))

from benchmarks.results import report  # noqa: E402 - after the path above


def run(workers: int, hidden: int, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from protocol.run import DataRequest, ModelRequest
    from protocol.strategies.es import parse_es_settings
    from ray_module.resources import node_resource
    from ray_module.strategies.es.noise import NoiseTable
    from ray_module.strategies.es.server import ESServer, Worker, make_optimizer
    from ray_module.strategies.es.worker import ESWorker
    from ray_module.strategies.es.worker_config import WorkerConfig

    training = {
        "population": args.population,
        "hidden_size": hidden,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
    }
    settings = parse_es_settings(training)
    actor = ray.remote(ESWorker)
    handles = [
        actor.options(num_cpus=1, resources={node_resource(1): 0.001}).remote(
            WorkerConfig(
                0,
                rank,
                1,
                0,
                1.0,
                0.5,
                ModelRequest("char_rnn", "rnn"),
                DataRequest("builtin", "stdlib-text"),
                settings,
            )
        )
        for rank in range(workers)
    ]
    infos = ray.get([h.info.remote() for h in handles])
    num_params = infos[0]["num_params"]
    noise = NoiseTable.create(settings.seed, num_params)
    server = ESServer(
        [Worker(h, 1, 0, 1.0, 0.5, rank=rank) for rank, h in enumerate(handles)],
        settings,
        noise,
        make_optimizer(settings),
    )
    theta = ray.get(handles[0].initial_parameters.remote())
    measured = []
    for step in range(1, args.steps + 1):
        result = server.run_step(step, theta)
        theta = result.theta
        if step > 1:
            measured.append(result.metrics)
    # The broadcast's cost: put the weights and fetch them in a worker process.
    started = time.perf_counter()
    for _ in range(5):
        ray.get(handles[0].loss_at.remote(ray.put(theta), handles[0].batch.remote(0)))
    round_trip = (time.perf_counter() - started) / 5
    for handle in handles:
        ray.kill(handle)
    return {
        "workers": workers,
        "num_params": num_params,
        "evaluations_per_s": float(np.mean([m["evaluations_per_s"] for m in measured])),
        "bytes_from_workers": measured[-1]["bytes_from_workers"],
        "theta_bytes": int(theta.nbytes),
        "update_s": float(np.mean([m["update_seconds"] for m in measured])),
        "put_and_evaluate_s": round_trip,
    }


def _plain_evaluations(config: Any, pairs: range, start: Any, results: Any) -> None:
    """One plain process: build the worker's evaluator, wait for the start, evaluate
    ``pairs`` and report (start, end) wall times."""
    sys.path.insert(0, str(ROOT / "backend"))
    from ray_module.strategies.es.evaluator import ESEvaluator

    evaluator = ESEvaluator(config)
    theta = evaluator.initial_parameters()
    ids = evaluator.batch(0)
    evaluator.pair_losses(theta, ids, 0)  # the first call's one-off costs, not timed
    start.wait()
    began = time.time()
    for index in pairs:
        evaluator.pair_losses(theta, ids, index)
    results.put((began, time.time()))


def machine_scaling_run(processes: int, args: argparse.Namespace) -> float:
    """Evaluations per second of as many pairs as the measured ES steps evaluate, shared by
    ``processes`` plain processes (no Ray), from the first start to the last end."""
    import multiprocessing

    from protocol.run import DataRequest, ModelRequest
    from protocol.strategies.es import parse_es_settings
    from ray_module.strategies.es.worker_config import WorkerConfig

    settings = parse_es_settings(
        {"population": args.population, "hidden_size": 32, "batch_size": args.batch_size,
         "seq_len": args.seq_len}
    )  # fmt: skip
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes + 1), context.Queue()
    share = args.population * (args.steps - 1) // processes
    children = []
    # As Ray starts a 1-CPU actor: one compute thread in every library, from its start.
    os.environ["OMP_NUM_THREADS"] = "1"
    for rank in range(processes):
        config = WorkerConfig(0, rank, 1, 0, 1.0, 0.5, ModelRequest("char_rnn", "rnn"),
                              DataRequest("builtin", "stdlib-text"), settings)  # fmt: skip
        pairs = range(rank * share, (rank + 1) * share)
        child = context.Process(target=_plain_evaluations, args=(config, pairs, start, results))
        child.start()
        children.append(child)
    del os.environ["OMP_NUM_THREADS"]
    start.wait()
    spans = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    wall = max(end for _, end in spans) - min(began for began, _ in spans)
    return 2 * share * processes / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--population", type=int, default=256, help="antithetic pairs per step")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per worker count")
    args = parser.parse_args()

    from ray_module.cluster import ClusterConfig, connect, disconnect
    from ray_module.resources import node_resource

    connect(ClusterConfig(num_cpus=args.cpus, resources={node_resource(1): 1000}))
    print(
        f"char-RNN on stdlib-text, population {args.population} pairs/step, batch "
        f"{args.batch_size}x{args.seq_len}, {args.cpus} CPUs, {args.steps - 1} measured steps"
    )
    ones: list[float] = []
    twos: list[float] = []
    plain_ones: list[float] = []
    plain_twos: list[float] = []
    print(
        "\nrun | 1 worker evaluations/s | 2 workers evaluations/s | scaling | "
        "plain: 1 process | 2 processes | the machine's scaling"
    )
    for repeat in range(1, args.repeat + 1):
        ones.append(run(1, 32, args)["evaluations_per_s"])
        twos.append(run(2, 32, args)["evaluations_per_s"])
        plain_ones.append(machine_scaling_run(1, args))
        plain_twos.append(machine_scaling_run(2, args))
        print(
            f"{repeat} | {ones[-1]:.0f} | {twos[-1]:.0f} | {twos[-1] / ones[-1]:.2f}x | "
            f"{plain_ones[-1]:.0f} | {plain_twos[-1]:.0f} | "
            f"{plain_twos[-1] / plain_ones[-1]:.2f}x",
            flush=True,
        )
    one, two = statistics.median(ones), statistics.median(twos)
    ceiling = statistics.median(plain_twos) / statistics.median(plain_ones)
    print("\nworkers | median evaluations/s | scaling vs 1 worker (aim >= 1.9x)")
    print(f"1 | {one:.0f} | 1.00x")
    print(f"2 | {two:.0f} | {two / one:.2f}x")
    print(
        f"the same evaluations in 2 plain processes against 1: {ceiling:.2f}x (medians "
        f"{statistics.median(plain_twos):.0f} and {statistics.median(plain_ones):.0f}/s): "
        f"ES reaches {two / one / ceiling:.0%} of what this machine gives two processes"
    )
    report(
        "es",
        f"evaluations/s, 2 workers (median of {args.repeat})",
        two,
        unit="evaluations/s",
        baseline=one,
        baseline_name="1 worker",
        aim=">= 1.9",
    )
    report(
        "es",
        "scaling from 1 to 2 workers, against the machine's own for the same work "
        f"(2 plain processes against 1: {ceiling:.2f}x)",
        two / one,
        unit="x",
        baseline=ceiling,
        baseline_name="the machine's scaling",
    )

    print(
        "\nhidden | parameters | bytes from workers/step | weights broadcast (bytes) | "
        "server update s (= a worker's local rebuild) | put + fetch + 1 eval s"
    )
    for hidden in (16, 64, 256):
        result = run(2, hidden, args)
        print(
            f"{hidden} | {result['num_params']} | {result['bytes_from_workers']} | "
            f"{result['theta_bytes']} | {result['update_s']:.4f} | "
            f"{result['put_and_evaluate_s']:.4f}"
        )
    disconnect()


if __name__ == "__main__":
    main()
