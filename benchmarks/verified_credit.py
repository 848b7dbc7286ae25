"""The cost of trust (verified credit, ES): validation compute as a share of the job's
compute, and time per step, for new nodes and for trusted ones, against the same run with no
validation, in one process.

    .venv/bin/python benchmarks/verified_credit.py [--steps 40 --population 64]

Two ``ESWorker`` actors stand for two owners' nodes on a local Ray; the real ``ESServer`` and
``Verifier`` run the steps. "new": both nodes start with no valid results (every answer is
replayed until 5 hold in a row, then ever fewer, within the job too); "trusted": both start
with 1,000 valid results (the 5% floor). A check's verdict is emitted with its step's events,
so a checked step's credit is released in the dispatcher round that stores its checkpoint;
an unchecked one waits for the node's next check (on average 1 / rate steps) or settlement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "backend"))


def run(args: argparse.Namespace, streak: int | None) -> dict[str, Any]:
    """``streak``: the nodes' valid results before the job; None: no validation at all."""
    import ray

    from protocol.run import DataRequest, ModelRequest
    from protocol.strategies.es import parse_es_settings
    from ray_module.resources import node_resource
    from ray_module.strategies.es.noise import NoiseTable
    from ray_module.strategies.es.server import ESServer, Worker, make_optimizer
    from ray_module.strategies.es.verification import Verifier
    from ray_module.strategies.es.worker import ESWorker
    from ray_module.strategies.es.worker_config import WorkerConfig

    settings = parse_es_settings({"population": args.population, "hidden_size": 32})
    model, data = ModelRequest("char_rnn", "rnn"), DataRequest("builtin", "stdlib-text")
    actor = ray.remote(ESWorker)
    workers = []
    for rank, node in enumerate((1, 2)):
        config = WorkerConfig(0, rank, node, 0, 1.0, 0.5, model, data, settings)
        handle = actor.options(num_cpus=1, resources={node_resource(node): 0.001}).remote(config)
        workers.append(
            Worker(handle, node, 0, 1.0, 0.5, rank=rank, owner_id=node, valid_streak=streak or 0)
        )
    infos = ray.get([w.handle.info.remote() for w in workers])
    verifier = None
    if streak is not None:  # the runner's referee (run.referee_evaluator) from model and data
        verifier = Verifier(settings.seed, lambda: referee_for(model, data, settings))
    server = ESServer(
        workers,
        settings,
        NoiseTable.create(settings.seed, infos[0]["num_params"]),
        make_optimizer(settings),
        verifier=verifier,
    )
    theta = ray.get(workers[0].handle.initial_parameters.remote())
    evaluations = replayed = checked_steps = 0
    step_s = []
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        result = server.run_step(step, theta)
        step_s.append(time.perf_counter() - started)
        theta = result.theta
        evaluations += result.metrics["evaluations"]
        replayed += sum(v.checked for v in result.verdicts)
        checked_steps += bool(result.verdicts)
        assert all(v.valid for v in result.verdicts), result.verdicts
    for worker in workers:
        ray.kill(worker.handle)
    return {
        "evaluations": evaluations,
        "replayed": replayed,
        "checked_steps": checked_steps,
        "median_step_s": statistics.median(step_s[1:]),
        "rates": [round(w.check_rate, 3) for w in workers],
    }


def run_fedavg(args: argparse.Namespace, streak: int | None) -> dict[str, Any]:
    """FedAvg, digits MLP: 4 clients on two hosts (two owners' nodes); what share of the
    clients' local trainings were done again to check them."""
    import ray

    from protocol.run import DataRequest, ModelRequest
    from protocol.strategies.fedavg import parse_fedavg_settings
    from ray_module.resources import node_resource
    from ray_module.strategies.fedavg.aggregate import server_optimizer
    from ray_module.strategies.fedavg.client import ClientHost, HostConfig
    from ray_module.strategies.fedavg.server import FedAvgServer, Host
    from ray_module.strategies.fedavg.verification import FedAvgVerifier

    settings = parse_fedavg_settings({"clients": 4, "rounds": args.rounds})
    model, data = ModelRequest("classifier", "mlp"), DataRequest("builtin", "digits")
    actor = ray.remote(ClientHost)
    hosts = []
    for node, clients in ((1, (0, 2)), (2, (1, 3))):
        config = HostConfig(0, node, 0, 1.0, 0.5, clients, model, data, settings)
        handle = actor.options(num_cpus=1, resources={node_resource(node): 0.001}).remote(config)
        hosts.append(
            Host(handle, node, 0, 1.0, 0.5, owner_id=node, valid_streak=streak or 0,
                 clients=clients)
        )  # fmt: skip
    ray.get([h.handle.ready.remote() for h in hosts])
    verifier = None
    if streak is not None:
        verifier = FedAvgVerifier(settings.seed, lambda: None)  # honest: never disputed
    server = FedAvgServer(hosts, settings, server_optimizer("fedavg", 1.0, 0.0), verifier=verifier)
    weights = ray.get(hosts[0].handle.initial_weights.remote())
    trainings = replayed = 0
    round_s = []
    for round_number in range(1, args.rounds + 1):
        result = server.run_round(round_number, weights)
        weights = result.weights
        trainings += result.metrics["clients_accepted"]
        replayed += len(result.verdicts)
        round_s.append(result.metrics["round_seconds"])
        assert all(v.valid for v in result.verdicts), result.verdicts
    for host in hosts:
        ray.kill(host.handle)
    return {
        "trainings": trainings,
        "replayed": replayed,
        "median_round_s": statistics.median(round_s[1:]),
        "accuracy": result.metrics.get("validation_accuracy"),
    }


def referee_for(model: Any, data: Any, settings: Any) -> Any:
    from ray_module.strategies.es.evaluator import ESEvaluator
    from ray_module.strategies.es.worker_config import WorkerConfig

    return ESEvaluator(WorkerConfig(0, -1, 0, 0, 1, 1, model, data, settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--population", type=int, default=64, help="antithetic pairs per step")
    parser.add_argument("--rounds", type=int, default=20, help="FedAvg rounds")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    from ray_module.cluster import ClusterConfig, connect, disconnect
    from ray_module.resources import node_resource

    connect(
        ClusterConfig(
            num_cpus=args.cpus, resources={node_resource(1): 1000, node_resource(2): 1000}
        )
    )
    print(
        f"char-RNN (hidden 32) on stdlib-text, ES, population {args.population} pairs/step on "
        f"two workers, {args.steps} steps, {args.cpus} CPUs"
    )
    # Run order moves step times by as much as validation does: the baseline runs first and
    # last, and the others are compared with the mean of the two.
    first = run(args, None)
    results = {name: run(args, streak) for name, streak in (("new", 0), ("trusted", 1000))}
    last = run(args, None)
    baseline = (first["median_step_s"] + last["median_step_s"]) / 2
    print("\nnodes | replayed / job's evaluations | steps checked | median step s | vs none | "
          "check rates at the end")  # fmt: skip
    print(
        f"no validation (first, last) | 0 | 0 | {first['median_step_s']:.3f}, "
        f"{last['median_step_s']:.3f} | 1.00x | -"
    )
    for name, result in results.items():
        share = result["replayed"] / result["evaluations"]
        print(
            f"{name} | {share:.1%} | {result['checked_steps']}/{args.steps} | "
            f"{result['median_step_s']:.3f} | {result['median_step_s'] / baseline:.2f}x | "
            f"{result['rates']}"
        )
    fed_first = run_fedavg(args, None)
    fed = {name: run_fedavg(args, streak) for name, streak in (("new", 0), ("trusted", 1000))}
    fed_last = run_fedavg(args, None)
    fed_baseline = (fed_first["median_round_s"] + fed_last["median_round_s"]) / 2
    print(
        f"\nFedAvg, digits MLP, 4 clients on two hosts, {args.rounds} rounds\n"
        "nodes | client trainings replayed / done | median round s | vs none | accuracy"
    )
    print(
        f"no validation (first, last) | 0 | {fed_first['median_round_s']:.3f}, "
        f"{fed_last['median_round_s']:.3f} | 1.00x | {fed_last['accuracy']:.3f}"
    )
    for name, result in fed.items():
        print(
            f"{name} | {result['replayed']}/{result['trainings']} "
            f"({result['replayed'] / result['trainings']:.1%}) | "
            f"{result['median_round_s']:.3f} | {result['median_round_s'] / fed_baseline:.2f}x | "
            f"{result['accuracy']:.3f}"
        )
    disconnect()


if __name__ == "__main__":
    main()
