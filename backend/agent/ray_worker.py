"""A Ray worker of the node: `ray start --block` joining a cluster (a multi-node job's, or
the trusted pool the agent was pointed at), stopped with nothing left behind, and, for a
pool, restarted when it dies."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from agent.errors import GatewayError, GatewayUnreachableError, NodeBannedError, RayWorkerError
from agent.gateway_client import GatewayClient, NodeIdentity
from agent.machine import GIB
from protocol.nodes import JoinInfo
from ray_module.head import NO_DRAIN_ON_SIGTERM, forget_cluster_pointer
from ray_module.ports import RayPorts
from ray_module.process import die_with_parent
from ray_module.warm.launch import default_size, launch_pool

log = logging.getLogger("distlm.agent")

# A worker that dies sooner than this after starting counts as a failed start.
WORKER_QUICK_DEATH_S = 60.0
RUN_MARKER = "--- distlm-node:"  # starts each run's section of the Ray worker's log


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")  # the venv's, even if not activated
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise RayWorkerError("the `ray` command is not installed: pip install 'ray[default]'")
    return found


def _die_with_agent() -> None:
    """Should the agent die without stopping the worker (SIGKILL, a crash), the worker gets
    SIGTERM, so no orphan keeps offering the node to the cluster."""
    die_with_parent()


def labels_arg(labels: dict[str, str]) -> str:
    """`ray start --labels` syntax: `k1=v1,k2=v2` (Ray's label rules exclude ',' and '=')."""
    for key, value in labels.items():
        if any(ch in key + value for ch in ",="):
            raise ValueError(f"label {key}={value} cannot be passed to ray start")
    return ",".join(f"{key}={value}" for key, value in labels.items())


class RayWorker:
    """`ray start --block` joining the cluster with the node's resources, custom resource
    and labels, in its own process group so that stopping it leaves nothing behind."""

    def __init__(
        self,
        join: JoinInfo,
        *,
        log_path: Path,
        object_store_mb: int | None = None,
        auth_token_file: Path | None = None,
        executable: str | None = None,
        node_address: str | None = None,
        ports: RayPorts | None = None,
    ) -> None:
        self.join = join
        # A job cluster's member: the address other nodes reach it at (Ray's own guess needs
        # a default route) and a port of its own for each component.
        self.node_address = node_address
        self.ports = ports
        self.log_path = log_path
        self.object_store_mb = object_store_mb
        self.auth_token_file = auth_token_file
        self.executable = executable
        self.started_at = 0.0
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        join = self.join
        # Whole quantities as integers: Ray reads either, people read `1000` more easily.
        resources = {k: int(v) if float(v).is_integer() else v for k, v in join.resources.items()}
        command = [
            self.executable or ray_executable(),
            "start",
            f"--address={join.ray_address}",
            f"--num-cpus={join.num_cpus}",
            f"--num-gpus={join.num_gpus}",
            f"--memory={int(join.memory_gb * GIB)}",
            f"--resources={json.dumps(resources, separators=(',', ':'))}",
            "--block",
            "--include-log-monitor=false",  # as the head's (ray_module.head)
            "--disable-usage-stats",
            "--log-style=record",
        ]
        if join.labels:
            command.append(f"--labels={labels_arg(join.labels)}")
        if self.node_address:
            command.append(f"--node-ip-address={self.node_address}")
        if self.ports is not None:
            command.extend(self.ports.start_args(head=False))
        if self.object_store_mb:
            command.append(f"--object-store-memory={self.object_store_mb * 1024 * 1024}")
        return command

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def environment(self) -> dict[str, str]:
        """The worker's environment, with Ray's token authentication when the cluster uses
        it. Ray never sends a local token to an explicit address on its own, so the agent
        opts in only with a token from the gateway or a token file the owner named."""
        # Every job that lands on this node runs in this environment: the owner's password
        # or token (DISTLM_NODE_*) and any other DistLM setting stay with the agent.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTLM_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(NO_DRAIN_ON_SIGTERM)
        if self.join.ray_auth_token:
            env.pop("RAY_AUTH_TOKEN_PATH", None)
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.join.ray_auth_token)
        elif self.auth_token_file is not None:
            env.pop("RAY_AUTH_TOKEN", None)
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.auth_token_file))
        else:
            # The owner's own RAY_AUTH_MODE stands; unset, `ray start` would turn token mode
            # on by itself wherever another Ray left ~/.ray/auth_token.
            env.setdefault("RAY_AUTH_MODE", "disabled")
        return env

    def start(self, *, settle_s: float = 2.0) -> None:
        """Start it and give it `settle_s` to fail fast (bad arguments, bad ray install)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command()
        with open(self.log_path, "ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"\n{RUN_MARKER} {stamp} {' '.join(command)}\n".encode())
            out.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,  # Ctrl-C in the terminal reaches the agent only
                preexec_fn=_die_with_agent,
            )
        self.started_at = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(settle_s)
        if not self.is_running():
            raise RayWorkerError(self.exit_explanation())

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def stop(self, timeout_s: float = 45.0) -> None:
        """SIGTERM makes `ray start --block` drain the node (up to 30 s with work running)
        and stop what it started; then the whole process group is killed for stragglers."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("Ray worker did not stop within %g s; killing it", timeout_s)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            forget_cluster_pointer(self.join.ray_address)

    def log_tail(self, lines: int = 20) -> str:
        """The end of this run's output (earlier runs append to the same file)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        this_run = text.rsplit(RUN_MARKER, 1)[-1]
        return "\n".join(this_run.splitlines()[-lines:])

    def refused_by_cluster_auth(self) -> bool:
        return "InvalidAuthToken" in self.log_tail(lines=200)

    def exit_explanation(self) -> str:
        if self.refused_by_cluster_auth():
            return (
                "the Ray cluster refused this node's authentication token. It uses Ray token "
                "authentication: get its token from the cluster's admin and pass "
                "--ray-auth-token-file PATH (or set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)"
            )
        return (
            f"ray start exited with {self.returncode}; last lines of {self.log_path}:\n"
            f"{self.log_tail()}"
        )


class WorkerSupervisor:
    """Keeps the node's member of a trusted pool running. A worker that exits (the pool's
    head restarted, the network dropped) starts again; too many quick deaths in a row end
    the agent."""

    def __init__(
        self,
        client: GatewayClient,
        identity: NodeIdentity,
        *,
        log_path: Path,
        object_store_mb: int | None,
        auth_token_file: Path | None,
        max_restarts: int,
        pool_address: str,
        node_address: str | None = None,
        warm_workers: int | None = None,
    ) -> None:
        self.client = client
        self.warm_workers = warm_workers  # None: ray_module.warm's default for the node's CPUs
        # A trusted pool's address (the agent's --ray-address), which the gateway's join
        # info does not hold, and the address this node's Ray serves at within it.
        self.pool_address, self.node_address = pool_address, node_address
        self.identity = identity
        self.log_path = log_path
        self.object_store_mb = object_store_mb
        self.auth_token_file = auth_token_file
        self.max_restarts = max_restarts
        self.worker: RayWorker | None = None
        self.quick_deaths = 0

    def start(self, join: JoinInfo) -> None:
        join = replace(join, ray_address=self.pool_address)
        worker = RayWorker(
            join,
            log_path=self.log_path,
            object_store_mb=self.object_store_mb,
            auth_token_file=self.auth_token_file,
            node_address=self.node_address,
        )
        self.worker = worker
        worker.start()
        # Its warm workers, on this machine (the keeper dies with the worker, and starts
        # again with it): a job that this node's agent drives starts on them at once.
        size = default_size(join.num_cpus) if self.warm_workers is None else self.warm_workers
        token = self.auth_token_file.read_text().strip() if self.auth_token_file else ""
        launch_pool(self.pool_address, token, join.node_id, size, self.node_address or "")
        log.info(
            "Ray worker (pid %s) joining %s with %s CPU, %s GPU, %s; log: %s",
            worker.pid,
            join.ray_address,
            join.num_cpus,
            join.num_gpus,
            ", ".join(f"{k}={v:g}" for k, v in join.resources.items()),
            self.log_path,
        )

    def check(self) -> None:
        worker = self.worker
        if worker is not None and worker.is_running():
            return
        if worker is None:  # a rejoin that could not start yet
            self.restart()
            return
        lived_s = time.monotonic() - worker.started_at
        self.quick_deaths = self.quick_deaths + 1 if lived_s < WORKER_QUICK_DEATH_S else 1
        log.warning("Ray worker died after %.0f s: %s", lived_s, worker.exit_explanation())
        if self.quick_deaths > self.max_restarts:
            raise RayWorkerError(
                f"the Ray worker died {self.quick_deaths} times in a row; see {self.log_path}"
            )
        self.restart(after_refusal=worker if worker.refused_by_cluster_auth() else None)

    def follow_resources(self, cpu_cores: float, gpu: int) -> None:
        """The owner changed what the node offers: restart the Ray worker with the new
        figures (the scheduler plans no more than Ray reports until then)."""
        worker = self.worker
        if worker is None:
            return
        if (worker.join.num_cpus, worker.join.num_gpus) == (max(1, int(cpu_cores)), gpu):
            return
        log.info("the node now offers %g CPU / %s GPU; restarting its Ray worker", cpu_cores, gpu)
        worker.stop(timeout_s=10)
        self.worker = None
        self.restart()

    def restart(self, *, after_refusal: RayWorker | None = None) -> None:
        """Start again with fresh join info (what the node offers may have changed). A
        worker the pool refused does not restart: its token would be refused again."""
        if after_refusal is not None:
            raise RayWorkerError(after_refusal.exit_explanation())  # retrying cannot help
        try:
            join = self.client.join_info(self.identity)
        except NodeBannedError:
            raise
        except (GatewayUnreachableError, GatewayError) as exc:
            # Try again at the next heartbeat; the gateway may be restarting.
            log.warning("cannot restart the Ray worker yet: %s", exc)
            return
        try:
            self.start(join)
        except RayWorkerError as exc:
            log.warning("cannot restart the Ray worker yet: %s", exc)

    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            log.info("Ray worker stopped")
            self.worker = None
