"""A real gateway for agent tests: the `make run` launcher with its own local Ray, SQLite
file and port, plus a node owner created by the bootstrap admin."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.paths import REPO_ROOT
from tests.polling import wait_for

ROOT = REPO_ROOT
PYTHON = str(ROOT / ".venv" / "bin" / "python")
OWNER = "agent-owner"
OWNER_PASSWORD = "agent-owner-password-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique_hostname() -> str:
    return f"node-{uuid.uuid4().hex[:10]}"


@dataclass
class Gateway:
    address: str  # HOST:PORT, as a node owner types it
    process: subprocess.Popen
    log_path: Path
    ray_tmpdir: str  # RAY_TMPDIR of its Ray, and of agents joining it
    admin_token: str = ""
    owner_token: str = ""

    @property
    def base(self) -> str:
        return f"http://{self.address}"

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> Any:
        response = httpx.request(
            method,
            self.base + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            **kwargs,
        )
        assert response.is_success, (response.status_code, response.text)
        return response.json()

    def as_owner(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, self.owner_token, **kwargs)

    def as_admin(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, self.admin_token, **kwargs)

    def node_named(self, hostname: str) -> dict[str, Any] | None:
        nodes = self.as_admin("GET", "/nodes", params={"limit": 500})["items"]
        return next((n for n in nodes if n["hostname"] == hostname), None)


def login(base: str, username: str, password: str) -> str:
    response = httpx.post(
        f"{base}/auth/token", data={"username": username, "password": password}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@contextmanager
def running_gateway(tmp: Path, **extra_env: str) -> Iterator[Gateway]:
    """The launcher `make run` runs, on a free port with its own SQLite file, plus a node
    owner created by the bootstrap admin: by default jobs run on the nodes' own Ray and the
    launcher lends this machine through a local agent (``DISTLM_LOCAL_NODE=false`` in
    ``extra_env``: it lends nothing)."""
    port = free_port()
    # A private Ray temp dir: a local `ray.init()` would otherwise join whatever cluster
    # /tmp/ray/ray_current_cluster names (another test run's). Short, for Ray's socket paths.
    ray_tmpdir = tempfile.mkdtemp(prefix="distlm-ray-", dir="/tmp")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "backend"),
        "DISTLM_PORT": str(port),
        "DISTLM_HOST": "127.0.0.1",
        "DISTLM_DATABASE_URL": f"sqlite:///{tmp / 'gateway.db'}",
        "DISTLM_STORAGE_PATH": str(tmp / "storage"),
        "DISTLM_RAY_NUM_CPUS": "1",
        "DISTLM_ARGON2_TIME_COST": "1",
        "DISTLM_ARGON2_MEMORY_KIB": "1024",
        "DISTLM_ADMIN_USERNAME": "admin",
        "DISTLM_ADMIN_PASSWORD": "admin-change-me",
        "NODE_HEARTBEAT_INTERVAL": "1",
        "RAY_TMPDIR": ray_tmpdir,
        **extra_env,
    }
    env.pop("RAY_ADDRESS", None)
    log_path = tmp / "gateway.log"
    with open(log_path, "wb") as log_file:  # a file, not a pipe nobody reads, which fills up
        process = subprocess.Popen(
            [PYTHON, "-m", "app.launcher"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    gateway = Gateway(f"127.0.0.1:{port}", process, log_path, ray_tmpdir)
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"gateway exited:\n{log_path.read_text()[-3000:]}"
            try:
                return httpx.get(f"{gateway.base}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout_s=120, what="the gateway to be healthy", every_s=0.3)
        gateway.admin_token = login(gateway.base, "admin", "admin-change-me")
        gateway.as_admin(
            "POST",
            "/auth/register",
            json={"username": OWNER, "password": OWNER_PASSWORD, "role": "node_owner"},
        )
        gateway.owner_token = login(gateway.base, OWNER, OWNER_PASSWORD)
        yield gateway
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the gateway stops its Ray
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def start_agent_process(
    gateway: Gateway, tmp: Path, hostname: str, *extra: str
) -> tuple[subprocess.Popen, Path]:
    """`distlm-node` with a real Ray for the gateway's owner (1 CPU, heartbeats every
    second), in an environment without the gateway's settings, as on another machine, with
    ``extra`` arguments. Returns the process and its log; the credential file is
    `tmp / "node.json"`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTLM_"))}
    env.update(
        PYTHONPATH=str(ROOT / "backend"),
        DISTLM_NODE_USERNAME=OWNER,
        DISTLM_NODE_PASSWORD=OWNER_PASSWORD,
        RAY_TMPDIR=gateway.ray_tmpdir,
    )
    log = tmp / "agent.log"
    command = [
        PYTHON, "-m", "agent", "--coordinator-address", gateway.address,
        "--hostname", hostname, "--cpu", "--cpus", "1", "--memory-gb", "0.5",
        "--object-store-mb", "80", "--credential-file", str(tmp / "node.json"),
        "--heartbeat-interval", "1", *extra,
    ]  # fmt: skip
    with open(log, "wb") as out:
        agent = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return agent, log
