"""The embedded default's Ray head, shared by every gateway process on the machine.

The head runs as its own process group (`ray start --head --block`), not inside one gateway
process: several gateway workers then use one Ray, and the death of any of them (the
dispatcher's leader included) takes no running job down with it. Its address and token
are published in a private file beside an exclusive lock, so whichever process comes first
starts it and the others adopt it; the last process to leave stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ray_module.cluster import CODE_ROOT, ClusterConfig
from ray_module.errors import ClusterStartError
from ray_module.ports import allocate_ray_ports
from ray_module.process import die_with_parent as parent_death_signal

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class HeadRecord:
    """What the processes sharing a head know of it (the file is mode 0600)."""

    pid: int  # of `ray start --block`, the leader of the head's process group
    address: str
    auth_token: str
    started_at: float  # epoch seconds


class HeadDirectory:
    """The files through which the gateway processes of one deployment share a head."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record_file = path / "head.json"
        self.log_file = path / "head.log"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive: one process at a time starts, adopts, rotates or stops the head."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path / "head.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self) -> HeadRecord | None:
        try:
            return HeadRecord(**json.loads(self.record_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, record: HeadRecord) -> None:
        temporary = self.record_file.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle)
        os.replace(temporary, self.record_file)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_file.unlink()


def head_alive(record: HeadRecord) -> bool:
    """The head's `ray start` is still running and its GCS port still answers."""
    try:
        os.kill(record.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    host, port = record.address.rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=2):
        return True
    return False


# Stopped (SIGTERM), `ray start --block` otherwise waits up to 30 s for the node to drain, and
# a node with a live actor (its warm workers, a job's) never drains: stopped means stopped.
NO_DRAIN_ON_SIGTERM = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def code_environment() -> dict[str, str]:
    """This process's environment for a process of a node's Ray (its head, a helper that
    joins it): Ray settings of this process (an address, a token of another cluster) are
    not the head's, where Ray keeps its files (RAY_TMPDIR) is; every job runs in it, so no
    DistLM setting or secret (an owner's DISTLM_NODE_PASSWORD) goes along; our code is on
    its path (the workers run our strategies)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "DISTLM_")) or k == "RAY_TMPDIR"
    }
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([CODE_ROOT, *[p for p in paths if p != CODE_ROOT]])
    return env


def start_head(
    config: ClusterConfig,
    directory: HeadDirectory,
    *,
    host: str | None = None,
    die_with_parent: bool = False,
) -> HeadRecord:
    """Start a head with this config's resources and token, every component on a port of
    its own; wait until it serves. ``host``: the address it serves at (default: the one
    other machines reach this one at)."""
    host = host or _node_ip()
    ports = allocate_ray_ports(host)
    port = ports.gcs
    command = [
        _ray_executable(),
        "start",
        "--head",
        "--block",
        *ports.start_args(head=True),
        f"--node-ip-address={host}",
        f"--num-cpus={config.num_cpus or os.cpu_count() or 1}",
        f"--num-gpus={config.num_gpus}",
        f"--object-store-memory={config.object_store_mb * 1024 * 1024}",
        "--include-dashboard=false",
        # Ray's log monitor copies every worker's log to drivers that never print them
        # (log_to_driver=False): our workers send their output to the runner themselves.
        "--include-log-monitor=false",
        "--disable-usage-stats",
        "--log-style=record",
    ]
    if config.resources:
        resources = {k: int(v) if float(v).is_integer() else v for k, v in config.resources.items()}
        command.append(f"--resources={json.dumps(resources, separators=(',', ':'))}")
    if config.labels:
        command.append("--labels=" + ",".join(f"{k}={v}" for k, v in config.labels.items()))
    env = code_environment()  # Ray's token in force below
    # The mode is always explicit: with RAY_AUTH_MODE unset, `ray start` turns token
    # authentication on by itself when ~/.ray/auth_token exists (any local `ray.init()` of
    # another program leaves one), and then no driver of ours could connect.
    if config.auth_token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=config.auth_token)
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    env.update(NO_DRAIN_ON_SIGTERM)
    directory.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.time()
    with open(directory.log_file, "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group: outlives the process that started it
            # ...unless it is a node's, which must not outlive the node's agent.
            preexec_fn=parent_death_signal if die_with_parent else None,
        )
    record = HeadRecord(
        pid=process.pid, address=f"{host}:{port}", auth_token=config.auth_token, started_at=started
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not head_alive(record):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_head(record)
            tail = directory.log_file.read_text(errors="replace").splitlines()[-15:]
            raise ClusterStartError("the local Ray head did not start:\n" + "\n".join(tail))
        time.sleep(0.2)
    log.info("ray head started at %s (pid %s)", record.address, record.pid)
    return record


def stop_head(record: HeadRecord, *, grace_s: float = 3.0) -> None:
    """SIGTERM the head's process group, then SIGKILL what is left: a head that stops
    takes every job with it anyway, so there is nothing to drain."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(record.pid):
        _reap(record.pid)  # a leader that exited stays in its group until reaped
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGKILL)
    _reap(record.pid, wait_s=5.0)
    forget_cluster_pointer(record.address)
    log.info("ray head at %s stopped", record.address)


def cluster_pointer_file() -> Path:
    """Where `ray start` notes the cluster it joined, which a later `ray.init()` without an
    address follows (Ray's own rule for its temp directory)."""
    root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(root) / "ray" / "ray_current_cluster"


def forget_cluster_pointer(address: str) -> None:
    """A stopped Ray leaves no note behind for a later `ray.init()` to follow (only ours: a
    note another Ray wrote since stays)."""
    pointer = cluster_pointer_file()
    with contextlib.suppress(OSError):
        if pointer.read_text().strip() == address:
            pointer.unlink()


def _reap(pid: int, wait_s: float = 0.0) -> None:
    """Collect the exit of ``pid`` where this process started it, once it has ended (within
    ``wait_s``): a child left unreaped stays a zombie in its group."""
    deadline = time.monotonic() + wait_s
    with contextlib.suppress(ChildProcessError, OSError):
        while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _node_ip() -> str:
    """The address other machines reach this one at, found as Ray finds it (the source
    address of a route outwards; a UDP connect sends nothing), without importing Ray
    into the gateway process."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("8.8.8.8", 80))
        return udp.getsockname()[0]
    return "127.0.0.1"


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")  # the venv's, even if not activated
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise ClusterStartError("the `ray` command is not installed: pip install 'ray[default]'")
    return found
