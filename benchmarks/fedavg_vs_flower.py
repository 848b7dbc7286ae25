"""Our ``fedavg`` engine against Flower's simulation engine on the same task, in one script.

The task (both sides implement the same definitions): scikit-learn's digits (read from the CSV
it ships, on both sides), a held-out 20% validation split, an IID partition over the clients,
an MLP 64-hidden-10 from the same seed, plain SGD written out (no ``torch.optim`` on either
side), every client every round, centralized validation accuracy after each round.

Flower runs in its own virtual environment (its pins conflict with ours), made by
``benchmarks/flower_setup.sh`` on first use; this script calls it. Every run, of either side,
is a fresh Python process (ours: this script with ``--one-run``; Flower's:
``benchmarks/flower_digits.py``), timed from just before its Ray starts to after its Ray has
shut down. The sides alternate (ours, Flower, ours, Flower, ...) so that a machine shared
with other work slows both alike; the medians of each side and their ratio are reported.

Two states of the machine, the same for both sides (``--machine``): **warm**, each side's
Ray up before the runs (ours as a node's agent starts and keeps it, ``ray_module.head``;
Flower's, of its own Ray version, by its venv's ``ray start`` with the same options), every
run joining it as a DistLM job's driver joins its node's Ray (Flower's ``init_args`` take an
address); **cold**, every run starting and stopping a Ray of its own, as Flower's simulation
does by default. A DistLM node runs a single-node job on its warm Ray, so warm is how the
platform runs this job; cold is what a run costs when nothing was up.

    .venv/bin/python benchmarks/fedavg_vs_flower.py                  # 4x10, 4x40, 8x20; 3 runs
    .venv/bin/python benchmarks/fedavg_vs_flower.py --configs 4x10 --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT))

from benchmarks.results import report  # noqa: E402 - after the path above

FLOWER_PYTHON = ROOT / "benchmarks" / ".venv-flower" / "bin" / "python"
DEFAULT_CONFIGS = "4x10,4x40,8x20"  # clients x rounds
OUR_PARTS = ("ray_start_s", "hosts_ready_s", "rounds_s", "shutdown_s")
PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MEMORY_GB = 2.0  # the job's memory requirement (the default a submit gets)


def job_request(args: argparse.Namespace) -> Any:
    """The job as a user would submit it: requirements of every core of this machine."""
    from protocol.run import DataRequest, JobRequest, ModelRequest, ResourceRequest

    return JobRequest(
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
        requirements=ResourceRequest(cpu_cores=float(args.num_cpus), memory_gb=MEMORY_GB),
    )


def worker_plans(args: argparse.Namespace) -> tuple[Any, ...]:
    """The scheduler's default for the job: its strategy's worker count (one client host per
    whole core, at most one per client), the requirements shared equally among them."""
    from protocol.run import WorkerPlan
    from protocol.strategies.fedavg import FedAvgRules

    request = job_request(args)
    rules = FedAvgRules()
    hosts = rules.worker_count(request, rules.parse_settings(request.knobs))
    share = request.requirements
    return tuple(
        WorkerPlan(1, 0, share.cpu_cores / hosts, share.memory_gb / hosts) for _ in range(hosts)
    )


def run_ours_here(args: argparse.Namespace) -> dict[str, Any]:
    """Our engine in this process: a local Ray started in it by the engine's ``connect`` (the
    way Flower's simulation starts its own) with one DistLM node, the job's client hosts as
    the scheduler would plan them."""
    import ray

    from protocol.events import MetricEvent
    from protocol.run import RunConfig
    from ray_module.cluster import ClusterConfig, connect
    from ray_module.resources import node_resource
    from ray_module.runner.job_runner import JobRunner
    from ray_module.strategies.fedavg.run import run_fedavg

    plans = worker_plans(args)
    started = time.perf_counter()
    if args.ray_address:
        # A warm node: its Ray was started by its agent before any job, and a job's driver
        # joins it (as ``agent.driver`` does; the token comes in the environment).
        host = args.ray_address.rsplit(":", 1)[0]
        ray.init(
            address=args.ray_address,
            namespace="distlm",
            log_to_driver=False,
            _node_ip_address=host,
        )
    else:
        # Ray started in the run, as on Flower's side.
        connect(ClusterConfig(num_cpus=args.num_cpus, resources={node_resource(1): 1000}))
    ray_up = time.perf_counter()
    ray_up_unix = time.time()
    with tempfile.TemporaryDirectory() as storage:
        config = RunConfig(job_id=1, request=job_request(args), workers=plans, storage_path=storage)
        runner = JobRunner(config)
        run_fedavg(config, runner)
    trained = time.perf_counter()
    trained_unix = time.time()
    ray.shutdown()  # counted: Flower's figure includes shutting its Ray down too
    finished = time.perf_counter()
    metrics = [r for r in runner.events() if isinstance(r.event, MetricEvent)]
    rounds = [r for r in metrics if r.event.step > 0]
    accuracies = [r.event.values["validation_accuracy"] for r in rounds]
    return {
        "engine": "distlm-warm" if args.ray_address else "distlm",
        "hosts": len(plans),
        "wall_s": finished - started,
        "ray_start_s": ray_up - started,
        "hosts_ready_s": metrics[0].at - ray_up_unix,
        "rounds_s": rounds[-1].at - metrics[0].at,
        "final_save_s": trained_unix - rounds[-1].at,
        "shutdown_s": finished - trained,
        "round_s_mean": sum(r.event.values["round_seconds"] for r in rounds) / len(rounds),
        "final_accuracy": accuracies[-1],
        "accuracies": accuracies,
    }


def task_flags(args: argparse.Namespace) -> list[str]:
    return [
        *("--clients", str(args.clients), "--rounds", str(args.rounds)),
        *("--local-epochs", str(args.local_epochs), "--batch-size", str(args.batch_size)),
        *("--learning-rate", str(args.learning_rate), "--hidden", str(args.hidden)),
        *("--seed", str(args.seed), "--validation-split", str(args.validation_split)),
        *("--num-cpus", str(args.num_cpus)),
    ]


def become_subreaper() -> None:
    """Processes a run leaves orphaned (a Ray process outliving its parent) are handed to this
    process instead of init: their CPU time is counted, and the next run waits for them
    (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_everything(timeout_s: float = 30.0, keep: frozenset[int] = frozenset()) -> None:
    """Wait for every descendant left but ``keep`` (a warm node's Ray): the next run starts on
    a machine with none of this run's processes still exiting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if keep and not own_children() - keep:
                return
            if time.monotonic() > deadline:
                left = sorted(own_children() - keep)
                names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in left[:5]]
                print(f"  (processes of the last run still alive, not waited for: {names})")
                return
            time.sleep(0.05)


def own_children() -> set[int]:
    children = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path("/proc", entry.name, "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid():
                children.add(int(entry.name))
    return children


class TreeCPU:
    """The CPU-seconds used by every descendant of this process, sampled from /proc every
    ``interval_s`` (a process's last moments before it exits are missed: a lower bound).
    Sampled because RUSAGE_CHILDREN, tried first, showed well under half of it: not every
    Ray process is reaped in a way that passes its CPU time up to this one."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.seen: dict[tuple[int, str], float] = {}  # (pid, start time): CPU-s
        self.before: dict[tuple[int, str], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> TreeCPU:
        self.sample()  # what processes already running (a warm node's Ray) had used before
        self.before = dict(self.seen)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def total_s(self) -> float:
        return sum(used - self.before.get(key, 0.0) for key, used in self.seen.items())

    def _sample_until_stopped(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        cpu: dict[int, tuple[str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path("/proc", entry.name, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
            pid = int(entry.name)
            children.setdefault(int(fields[1]), []).append(pid)
            cpu[pid] = (fields[19], (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
        pending = list(children.get(os.getpid(), []))
        while pending:
            pid = pending.pop()
            pending.extend(children.get(pid, []))
            if pid in cpu:
                started, used = cpu[pid]
                self.seen[(pid, started)] = used


def last_json(
    command: list[str], env: dict[str, str], side: str, keep: frozenset[int] = frozenset()
) -> dict[str, Any]:
    """Run one side's process; its JSON line, with the CPU-seconds its whole process tree
    used (Python's start and imports, Ray's daemons and workers, the clients; on a warm
    node, what its Ray's processes used during the run)."""
    with TreeCPU() as meter:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        reap_everything(keep=keep)
    cpu_s = meter.total_s
    if done.returncode != 0:
        raise SystemExit(f"{side}'s run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    run = json.loads(done.stdout.strip().splitlines()[-1])
    # What is left once Ray's start and shutdown (the same Ray calls on both sides) are out.
    run["engine_s"] = run["wall_s"] - run["ray_start_s"] - run["shutdown_s"]
    return {**run, "cpu_s": cpu_s}


def run_ours(
    args: argparse.Namespace, node: WarmNode | None, *, keep: frozenset[int]
) -> dict[str, Any]:
    """One run of ours in a fresh process, as Flower's is: starting its own Ray, or joining
    the warm Ray of a ``node``, as a job's driver does."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one-run", *task_flags(args)]
    env = dict(os.environ)
    if node is not None:
        command += ["--ray-address", node.record.address]
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=node.record.auth_token)
    return last_json(command, env, "DistLM", keep=keep)


class WarmNode:
    """A node's own Ray, started once before the runs as a node's agent starts it
    (``agent.own_ray``: ``ray_module.head.start_head`` with the node's resources and a token
    of its own, then its warm workers, ``ray_module.warm``), and stopped after them."""

    def __init__(self, num_cpus: int, warm_workers: int) -> None:
        import secrets

        from ray_module.cluster import ClusterConfig
        from ray_module.head import HeadDirectory, start_head
        from ray_module.resources import node_resource

        self.directory = tempfile.TemporaryDirectory()
        config = ClusterConfig(
            num_cpus=num_cpus,
            resources={node_resource(1): 1000},
            auth_token=secrets.token_urlsafe(32),
        )
        self.record = start_head(config, HeadDirectory(Path(self.directory.name)), host="127.0.0.1")
        self.address = self.record.address
        self.pids = frozenset({self.record.pid})
        self._settle()
        self.warm_workers = warm_workers
        if warm_workers and not self._warm({"node_id": 1, "size": warm_workers}):
            raise SystemExit("the node's warm workers did not start")

    def wait_warm(self) -> None:
        """Until the node's warm workers are all ready again (a run's are killed once it
        ends, and new ones start): every run starts on a node that was idle a while."""
        if self.warm_workers and not self._warm({"node_id": 1, "wait": True}):
            raise SystemExit("the node's warm workers did not come back")

    def _warm(self, order: dict[str, Any]) -> bool:
        from ray_module.warm.launch import run_warm_command

        return run_warm_command(self.record.address, self.record.auth_token, order)

    def _settle(self) -> None:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.record.auth_token}
        settle(sys.executable, self.record.address, env)

    def stop(self) -> None:
        from ray_module.head import stop_head

        stop_head(self.record)
        self.directory.cleanup()


def settle(python: str, address: str, env: dict[str, str], timeout_s: float = 60.0) -> None:
    """Join a just-started Ray once and leave (as a first job's driver would), then wait
    until its processes are idle: a warm node has been up a while, not a second."""
    join = f"import ray; ray.init(address={address!r}); ray.shutdown()"
    deadline = time.monotonic() + timeout_s
    while subprocess.run([python, "-c", join], env=env, capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm Ray at {address} did not answer")
        time.sleep(1.0)
    with TreeCPU(interval_s=0.5) as meter:
        used = 0.0
        while time.monotonic() < deadline:
            time.sleep(1.0)
            meter.sample()
            if meter.total_s - used < 0.1:  # CPU-s in the last second
                return
            used = meter.total_s


def flower_env() -> dict[str, str]:
    """Flower's own Ray, not ours: keep our environment's Ray settings out of its way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("PYTHONPATH", None)
    return env


class FlowerWarmRay:
    """Flower's side of a warm machine: a Ray of Flower's own version (its venv's ``ray
    start``), with the same options as our node's head, started once; each Flower run joins
    it (Flower's ``init_args`` take an address) instead of starting one."""

    def __init__(self, num_cpus: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        command = [
            str(FLOWER_PYTHON.with_name("ray")),
            *("start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1"),
            *(f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false"),
            *("--include-log-monitor=false", "--disable-usage-stats"),
        ]
        env = {**flower_env(), "RAY_AUTH_MODE": "disabled"}
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.pids = frozenset({self.process.pid})
        settle(str(FLOWER_PYTHON), self.address, env)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def run_flower(
    args: argparse.Namespace, warm_ray: FlowerWarmRay | None, *, keep: frozenset[int]
) -> dict[str, Any]:
    command = [
        str(FLOWER_PYTHON),
        str(ROOT / "benchmarks" / "flower_digits.py"),
        *task_flags(args),
        *("--cpus-per-client", str(args.flower_cpus_per_client)),
    ]
    env = flower_env()
    if warm_ray is not None:
        command += ["--ray-address", warm_ray.address]
        env["RAY_AUTH_MODE"] = "disabled"
    return last_json(command, env, "Flower", keep=keep)


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for part in text.split(","):
        clients, _, rounds = part.strip().partition("x")
        configs.append((int(clients), int(rounds)))
    return configs


def describe(run: dict[str, Any]) -> str:
    if run["engine"].startswith("distlm"):
        return (
            f"distlm: wall {run['wall_s']:.2f} s (Ray start {run['ray_start_s']:.2f}, hosts "
            f"ready {run['hosts_ready_s']:.2f}, rounds {run['rounds_s']:.2f}, model saved "
            f"{run['final_save_s']:.2f}, shutdown {run['shutdown_s']:.2f}; "
            f"{run['round_s_mean'] * 1000:.1f} ms/round), {run['cpu_s']:.1f} CPU-s, "
            f"accuracy {run['final_accuracy']:.4f}"
        )
    return (
        f"flower {run.get('flwr_version', '?')}: wall {run['wall_s']:.2f} s (Ray start "
        f"{run['ray_start_s']:.2f}, shutdown {run['shutdown_s']:.2f}), {run['cpu_s']:.1f} CPU-s, "
        f"accuracy {run['final_accuracy']:.4f}"
    )


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help="clients x rounds, comma-separated"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per side and configuration")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs each side's Ray may use")
    parser.add_argument(
        "--flower-cpus-per-client",
        type=float,
        default=1.0,
        help="Flower's client_resources num_cpus (1.0: one client actor per core, as ours)",
    )
    parser.add_argument(
        "--machine",
        default="warm,cold",
        help="warm: each side's Ray is up before the runs (ours as a node's agent keeps it, "
        "Flower's of its own version with the same options) and each run joins it; cold: each "
        "run starts its own; or both",
    )
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument(
        "--warm-workers",
        type=int,
        default=-1,
        help="the warm node's warm workers (default: as an agent keeps, one per core, at "
        "most 4; 0: none, every host a fresh Ray worker)",
    )
    # Internal: one run of ours with these flags, its JSON on the last line.
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--ray-address", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_run:
        print(json.dumps(run_ours_here(args)), flush=True)
        return
    if not args.skip_flower:
        subprocess.run(["bash", str(ROOT / "benchmarks" / "flower_setup.sh")], check=True)
    become_subreaper()

    modes = [mode.strip() for mode in args.machine.split(",") if mode.strip()]
    if set(modes) - {"warm", "cold"} or not modes:
        raise SystemExit("--machine takes warm, cold or both")
    warm = None
    if "warm" in modes:
        from ray_module.warm.launch import default_size

        workers = default_size(args.num_cpus) if args.warm_workers < 0 else args.warm_workers
        warm = WarmRays(args.num_cpus, flower=not args.skip_flower, warm_workers=workers)
    try:
        summary = [one_configuration(args, clients, rounds, modes, warm)
                   for clients, rounds in parse_configs(args.configs)]  # fmt: skip
    finally:
        if warm is not None:
            warm.stop()
    print_summary(summary, modes)


Runs = list[dict[str, Any]]
Configuration = tuple[int, int, dict[str, Runs], dict[str, Runs], set[float]]


class WarmRays:
    """Both sides' warm Ray, each of its own version, started before the runs."""

    def __init__(self, num_cpus: int, *, flower: bool, warm_workers: int) -> None:
        self.ours = WarmNode(num_cpus, warm_workers)
        self.flower = FlowerWarmRay(num_cpus) if flower else None
        self.pids = self.ours.pids | (self.flower.pids if self.flower else frozenset())

    def stop(self) -> None:
        self.ours.stop()
        if self.flower is not None:
            self.flower.stop()
        reap_everything()


def one_configuration(
    args: argparse.Namespace, clients: int, rounds: int, modes: list[str], warm: WarmRays | None
) -> Configuration:
    args.clients, args.rounds = clients, rounds
    hosts = len(worker_plans(args))
    print(
        f"\n{clients} clients x {rounds} rounds: digits, mlp({args.hidden}), "
        f"{args.local_epochs} local epochs, batch {args.batch_size}, lr "
        f"{args.learning_rate}, {args.num_cpus} CPUs; ours {hosts} client hosts of "
        f"{args.num_cpus / hosts:g} CPU, Flower {args.flower_cpus_per_client:g} CPU a client",
        flush=True,
    )
    keep = warm.pids if warm else frozenset()
    ours: dict[str, Runs] = {mode: [] for mode in modes}
    flower: dict[str, Runs] = {mode: [] for mode in modes}
    for _ in range(args.repeat):  # alternate the sides
        for mode in modes:
            on_warm = warm is not None and mode == "warm"
            if warm is not None:
                warm.ours.wait_warm()
            ours[mode].append(run_ours(args, warm.ours if on_warm else None, keep=keep))
            print(f"  {mode}: {describe(ours[mode][-1])}", flush=True)
            if not args.skip_flower:
                if warm is not None:
                    warm.ours.wait_warm()
                ray = warm.flower if on_warm else None
                flower[mode].append(run_flower(args, ray, keep=keep))
                print(f"  {mode}: {describe(flower[mode][-1])}", flush=True)
    runs = [run for side in (ours, flower) for by_mode in side.values() for run in by_mode]
    return clients, rounds, ours, flower, {run["final_accuracy"] for run in runs}


MACHINES = {
    "warm": "Ray up before the run (a node's, kept warm), on both sides",
    "cold": "Ray started in the run, on both sides",
}


def print_summary(summary: list[Configuration], modes: list[str]) -> None:
    print(
        "\nmedians | Ray | distlm wall s | flower wall s | ratio (aim <= 0.4) | distlm CPU-s | "
        "flower CPU-s | ratio | final accuracy"
    )
    for clients, rounds, ours_by_mode, flower_by_mode, accuracies in summary:
        for mode in modes:
            ours, flower = ours_by_mode[mode], flower_by_mode[mode]
            ours_s, ours_cpu = median_of(ours, "wall_s"), median_of(ours, "cpu_s")
            if flower:
                flower_s, flower_cpu = median_of(flower, "wall_s"), median_of(flower, "cpu_s")
                theirs = (
                    f"{flower_s:.2f} | {ours_s / flower_s:.2f} | {ours_cpu:.1f} | "
                    f"{flower_cpu:.1f} | {ours_cpu / flower_cpu:.2f}"
                )
                report(
                    "fedavg_vs_flower",
                    f"{clients} clients x {rounds} rounds, {MACHINES[mode]}, wall (median of "
                    f"{len(ours)})",
                    ours_s,
                    unit="s",
                    baseline=flower_s,
                    baseline_name="Flower simulation",
                    aim="<= 0.4",
                )
            else:
                theirs = f"- | - | {ours_cpu:.1f} | - | -"
            same = "equal" if len(accuracies) == 1 else "DIFFER"
            shown = ", ".join(f"{a:.4f}" for a in sorted(accuracies))
            print(f"{clients}x{rounds} | {mode} | {ours_s:.2f} | {theirs} | {shown} ({same})")
    print(
        "\nmedians, s | Ray | distlm Ray start or join | hosts ready | rounds | shutdown or "
        "leave | flower Ray start or join | shutdown or leave | wall less those: distlm | "
        "flower | ratio"
    )
    for clients, rounds, ours_by_mode, flower_by_mode, _ in summary:
        for mode in modes:
            ours, flower = ours_by_mode[mode], flower_by_mode[mode]
            parts = [median_of(ours, key) for key in OUR_PARTS]
            if flower:
                parts += [median_of(flower, key) for key in ("ray_start_s", "shutdown_s")]
                ours_rest, flower_rest = median_of(ours, "engine_s"), median_of(flower, "engine_s")
                parts += [ours_rest, flower_rest, ours_rest / flower_rest]
            print(f"{clients}x{rounds} | {mode} | " + " | ".join(f"{part:.2f}" for part in parts))


if __name__ == "__main__":
    main()
