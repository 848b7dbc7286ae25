"""Our ``fedavg`` engine against Flower's simulation engine on the same task, in one script.

The task (both sides implement the same definitions): scikit-learn's digits, a held-out 20%
validation split, an IID partition over the clients, an MLP 64-hidden-10 from the same seed,
plain SGD, every client every round, centralized validation accuracy after each round.

Flower runs in its own virtual environment (its pins conflict with ours), made by
``benchmarks/flower_setup.sh`` on first use; this script calls it, then runs Flower's side
(``benchmarks/flower_digits.py``) as a subprocess. Both wall times include starting Ray.

    .venv/bin/python benchmarks/fedavg_vs_flower.py [--rounds 10 --clients 4 ...] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "backend"))

FLOWER_PYTHON = ROOT / "benchmarks" / ".venv-flower" / "bin" / "python"


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """Our engine in this process: a local Ray with one DistLM node, one host per client."""
    import ray

    from protocol.events import MetricEvent
    from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan
    from ray_module.cluster import ClusterConfig, connect
    from ray_module.resources import node_resource
    from ray_module.runner.job_runner import JobRunner
    from ray_module.strategies.fedavg.run import run_fedavg

    started = time.perf_counter()
    # The gateway's own way of starting its local Ray (make run), with one DistLM node.
    connect(ClusterConfig(num_cpus=args.num_cpus, resources={node_resource(1): 1000}))
    ray_up = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        config = RunConfig(
            job_id=1,
            request=JobRequest(
                strategy="fedavg",
                model=ModelRequest("classifier", "mlp"),
                data=DataRequest("builtin", "digits", validation_split=args.validation_split),
                knobs={
                    "rounds": args.rounds,
                    "clients": args.clients,
                    "local_epochs": args.local_epochs,
                    "batch_size": args.batch_size,
                    "learning_rate": args.learning_rate,
                    "hidden_size": args.hidden,
                    "seed": args.seed,
                    "min_fit_clients": args.clients,
                },
            ),
            workers=tuple(WorkerPlan(1, 0, args.cpus_per_client, 0.5) for _ in range(args.clients)),
            storage_path=storage,
        )
        runner = JobRunner(config)
        run_fedavg(config, runner)
    trained = time.perf_counter()
    ray.shutdown()  # counted: Flower's figure includes shutting its Ray down too
    finished = time.perf_counter()
    metrics = [r for r in runner.events() if isinstance(r.event, MetricEvent)]
    rounds = [r for r in metrics if r.event.step > 0]
    accuracies = [r.event.values["validation_accuracy"] for r in rounds]
    hosts_ready = metrics[0].at - (time.time() - (time.perf_counter() - ray_up))
    return {
        "engine": "distlm",
        "wall_s": finished - started,
        "ray_start_s": ray_up - started,
        "hosts_ready_s": hosts_ready,
        "rounds_s": rounds[-1].at - metrics[0].at,
        "shutdown_s": finished - trained,
        "wall_s_after_ray_start": finished - ray_up,
        "round_s_mean": sum(r.event.values["round_seconds"] for r in rounds) / len(rounds),
        "final_accuracy": accuracies[-1],
        "accuracies": accuracies,
    }


def hosts_for(args: argparse.Namespace) -> int:
    return max(1, min(args.clients, args.num_cpus))


def run_flower(args: argparse.Namespace) -> dict[str, Any]:
    subprocess.run(["bash", str(ROOT / "benchmarks" / "flower_setup.sh")], check=True)
    command = [
        str(FLOWER_PYTHON),
        str(ROOT / "benchmarks" / "flower_digits.py"),
        *("--clients", str(args.clients), "--rounds", str(args.rounds)),
        *("--local-epochs", str(args.local_epochs), "--batch-size", str(args.batch_size)),
        *("--learning-rate", str(args.learning_rate), "--hidden", str(args.hidden)),
        *("--seed", str(args.seed), "--validation-split", str(args.validation_split)),
        *("--cpus-per-client", str(args.cpus_per_client), "--num-cpus", str(args.num_cpus)),
    ]
    # Flower's own Ray, not ours: keep our environment's Ray settings out of its way.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"Flower's run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--cpus-per-client", type=float, default=0.5)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine (best is kept)")
    parser.add_argument("--skip-flower", action="store_true")
    args = parser.parse_args()

    print(
        f"task: digits, mlp({args.hidden}), {args.clients} clients, {args.rounds} rounds, "
        f"{args.local_epochs} local epochs, batch {args.batch_size}, lr {args.learning_rate}, "
        f"{args.cpus_per_client} CPU per client on {args.num_cpus} CPUs"
    )
    ours = [run_ours(args) for _ in range(args.repeat)]
    best_ours = min(ours, key=lambda r: r["wall_s"])
    for run in ours:
        print(
            f"distlm fedavg: wall {run['wall_s']:.2f} s (Ray start {run['ray_start_s']:.2f}, "
            f"hosts ready {run['hosts_ready_s']:.2f}, {args.rounds} rounds "
            f"{run['rounds_s']:.2f}, shutdown {run['shutdown_s']:.2f}; "
            f"{run['round_s_mean'] * 1000:.1f} ms/round), "
            f"final accuracy {run['final_accuracy']:.4f}"
        )
    if args.skip_flower:
        return
    flower = [run_flower(args) for _ in range(args.repeat)]
    best_flower = min(flower, key=lambda r: r["wall_s"])
    for run in flower:
        print(
            f"flower {run.get('flwr_version', '?')} simulation: wall {run['wall_s']:.2f} s, "
            f"final accuracy {run['final_accuracy']:.4f}"
        )
    ratio = best_ours["wall_s"] / best_flower["wall_s"]
    print(
        f"best wall time: distlm {best_ours['wall_s']:.2f} s, flower {best_flower['wall_s']:.2f} s,"
        f" ratio distlm/flower {ratio:.2f} (goal <= 0.5); accuracy distlm "
        f"{best_ours['final_accuracy']:.4f} vs flower {best_flower['final_accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
