"""FedAvg on scikit-learn's digits with Flower's simulation engine (the Ray-backed one).

The Flower side of the comparison with our federated-averaging engine: the same data, split,
partition, model, local training and aggregation, driven by Flower instead. Runs in its own
environment, since Flower's pins conflict with the project's:

    bash benchmarks/flower_setup.sh
    benchmarks/.venv-flower/bin/python benchmarks/flower_digits.py --clients 4 --rounds 10

The last line on stdout is one JSON object: engine, flwr_version, wall_s (from just before the
simulation starts, Ray's start included, to its end), ray_start_s and shutdown_s (its calls of
``ray.init`` and ``ray.shutdown``, timed), final_accuracy, accuracies (centralised
validation accuracy after each round), rounds and clients.

Every client trains in every round; there is no federated evaluation, only the server's
evaluation of the global model on the validation split after each round. The ClientApp lives at
module level and is handed to Flower through this module imported under its own name, so Ray
pickles it by reference and each actor loads the data once, as a Flower app run with `flwr run`
would.
"""

from __future__ import annotations

import os

# Read by Flower and Ray at import time: send nothing out (this machine has no internet, and a
# telemetry post that waits for a timeout would be counted in the wall time).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Silence Ray's FutureWarning about CUDA_VISIBLE_DEVICES with num_gpus=0 (no GPU is used).
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import argparse
import functools
import importlib
import importlib.util
import json
import logging
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

import flwr
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

# --- the task: these definitions are shared with our engine, keep them identical ---------------


def digits_arrays():
    # The CSV scikit-learn ships (the file load_digits reads), read without importing
    # scikit-learn: that import costs a process most of a second. DistLM reads it the same way
    # (backend/ray_module/data/examples.py, digits).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise RuntimeError("digits needs scikit-learn installed (its CSV is read, not imported)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return raw[:, :-1] / 16.0, raw[:, -1].astype(np.int64)  # X [1797,64], y [1797]


def split_validation(n, fraction, seed):
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fraction))
    return order[n_val:], order[:n_val]  # train indices, validation indices


def iid_partition(train_indices, clients, seed):
    order = np.random.default_rng(seed + 1).permutation(len(train_indices))
    return [train_indices[part] for part in np.array_split(order, clients)]


class PlainSGD:
    """``torch.optim.SGD(params, lr)`` without momentum, written out, as DistLM's client does:
    the first ``torch.optim`` optimizer a process creates imports torch's compiler stack
    (~0.8 s), which each client process would pay in its first round."""

    def __init__(self, params, lr):
        self.params = list(params)
        self.lr = lr

    def zero_grad(self):
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self):
        for param in self.params:
            if param.grad is not None:
                param.add_(param.grad, alpha=-self.lr)


def make_mlp(hidden, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )


# --- data, cached per process (each Ray actor loads it once) -----------------------------------


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_arrays()
    return torch.from_numpy(x), torch.from_numpy(y)


@functools.lru_cache(maxsize=64)
def _client_shard(
    partition_id: int, clients: int, validation_split: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits_tensors()
    train_indices, _ = split_validation(len(y), validation_split, seed)
    shard = torch.from_numpy(iid_partition(train_indices, clients, seed)[partition_id])
    return x[shard], y[shard]


def _validation_set(validation_split: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits_tensors()
    _, validation_indices = split_validation(len(y), validation_split, seed)
    index = torch.from_numpy(validation_indices)
    return x[index], y[index]


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return int((model(x).argmax(dim=1) == y).sum()) / len(y)


# --- ClientApp ---------------------------------------------------------------------------------

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Client i: load the global weights, train local epochs of SGD on shard i, send them back."""
    torch.set_num_threads(1)
    config = msg.content["config"]
    client = int(context.node_config["partition-id"])
    server_round = int(config["server-round"])  # 1 for the first round
    seed = int(config["seed"])
    batch_size = int(config["batch-size"])
    x, y = _client_shard(client, int(config["clients"]), float(config["validation-split"]), seed)

    model = make_mlp(int(config["hidden"]), seed)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    optimizer = PlainSGD(model.parameters(), lr=float(config["learning-rate"]))
    generator = torch.Generator().manual_seed(seed * 1000 + server_round * 100 + client)
    for _ in range(int(config["local-epochs"])):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()

    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(y)}),
        }
    )
    return Message(content=content, reply_to=msg)


# --- ServerApp (runs in a thread of this process) ----------------------------------------------


class AllClientsFedAvg(FedAvg):
    """FedAvg that fails the run when a client's reply is missing or an error.

    Flower's FedAvg logs a failed reply and averages the others; for a benchmark that would
    silently compare different computations.
    """

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        errors = [str(msg.error) for msg in replies if msg.has_error()]
        if errors or len(replies) != self.min_train_nodes:
            raise RuntimeError(
                f"round {server_round}: {len(replies)} replies for {self.min_train_nodes} "
                f"clients, errors: {errors}"
            )
        return super().aggregate_train(server_round, replies)


def make_server_app(args: argparse.Namespace, results: dict) -> ServerApp:
    server_app = ServerApp()
    x_val, y_val = _validation_set(args.validation_split, args.seed)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = make_mlp(args.hidden, args.seed)
        model.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord({"accuracy": accuracy(model, x_val, y_val)})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = AllClientsFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=args.clients,
            min_evaluate_nodes=0,
            min_available_nodes=args.clients,
        )
        train_config = ConfigRecord(
            {
                "seed": args.seed,
                "clients": args.clients,
                "validation-split": args.validation_split,
                "hidden": args.hidden,
                "local-epochs": args.local_epochs,
                "batch-size": args.batch_size,
                "learning-rate": args.learning_rate,
            }
        )
        results["result"] = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(make_mlp(args.hidden, args.seed).state_dict()),
            num_rounds=args.rounds,
            train_config=train_config,
            evaluate_fn=evaluate,
        )

    return server_app


def time_ray_start_and_shutdown() -> dict[str, float]:
    """Wrap ``ray.init`` and ``ray.shutdown`` (Flower calls them as attributes of the module)
    to time them: the parts of the wall time that the other side pays alike. Timing only;
    importing Ray here also puts its import before the clock, as on DistLM's side (Flower
    would otherwise import it inside ``run_simulation``)."""
    import ray

    times = {"init": 0.0, "shutdown": 0.0}

    def timed(name: str, call):
        @functools.wraps(call)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                times[name] += time.perf_counter() - started

        return wrapper

    ray.init = timed("init", ray.init)
    ray.shutdown = timed("shutdown", ray.shutdown)
    return times


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-split", type=float, default=0.2)
    # One client actor per core, as DistLM's hosts: on 2 cores 0.5 (four actors importing
    # torch and Flower) made Flower's run about 1.7x slower.
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs Flower's Ray may use")
    parser.add_argument("--verbose", action="store_true", help="Flower's INFO logs per round")
    parser.add_argument(
        "--ray-address", default="", help="join this running Ray instead of starting one"
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.local_epochs < 1 or args.batch_size < 1:
        parser.error("--clients, --rounds, --local-epochs and --batch-size must be at least 1")
    if not 0.0 < args.validation_split < 1.0:
        parser.error("--validation-split must lie strictly between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Flower logs every round at INFO; keep WARNING and ERROR (deprecations, failed replies).
    logging.getLogger("flwr").setLevel(logging.DEBUG if args.verbose else logging.WARNING)

    # This module under its own name, not __main__, so that Ray pickles the ClientApp by
    # reference and the actors import it (the driver's sys.path reaches them via PYTHONPATH).
    module = importlib.import_module(Path(__file__).stem)
    results: dict = {}
    server_app = make_server_app(args, results)
    backend_config = {
        "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
        # "local": Flower starts a Ray of its own. Without it ray.init() joins the cluster named
        # by RAY_ADDRESS or /tmp/ray/ray_current_cluster (the project's tests leave one running),
        # which refuses num_cpus and runs Ray of another version.
        "init_args": {
            "address": "local",
            "num_cpus": args.num_cpus,
            "num_gpus": 0,
            "logging_level": logging.WARNING,
        },
    }
    if args.ray_address:  # a Ray already up (a warm machine): join it, its CPUs are its own
        backend_config["init_args"] = {
            "address": args.ray_address,
            "logging_level": logging.WARNING,
        }

    ray_times = time_ray_start_and_shutdown()
    start = time.perf_counter()
    try:
        run_simulation(
            server_app=server_app,
            client_app=module.client_app,
            num_supernodes=args.clients,
            backend_config=backend_config,
            verbose_logging=args.verbose,
        )
    except BaseException:
        # When the simulation runtime fails (Ray did not start, say), the ServerApp thread is
        # left waiting for nodes and, not being a daemon, would keep the process alive.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    wall_s = time.perf_counter() - start

    result = results.get("result")
    if result is None:
        print("the ServerApp did not finish; see Flower's log above", file=sys.stderr)
        return 1
    evaluations = result.evaluate_metrics_serverapp
    missing = [r for r in range(1, args.rounds + 1) if r not in evaluations]
    if missing:
        print(f"no centralised evaluation for rounds {missing}", file=sys.stderr)
        return 1
    accuracies = [float(evaluations[r]["accuracy"]) for r in range(1, args.rounds + 1)]
    print(
        json.dumps(
            {
                "engine": "flower",
                "flwr_version": flwr.__version__,
                "wall_s": round(wall_s, 3),
                "ray_start_s": round(ray_times["init"], 3),
                "shutdown_s": round(ray_times["shutdown"], 3),
                "final_accuracy": accuracies[-1],
                "accuracies": accuracies,
                "rounds": args.rounds,
                "clients": args.clients,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
