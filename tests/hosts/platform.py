"""DistLM across separate hosts: the real launcher on the gateway host, real `distlm-node`
agents on node hosts (jobs on the nodes' own Ray), and an API client for the test process.

The test process sits outside every host's network; it reaches the gateway through a relay on
the gateway host that listens on a Unix socket (a file crosses network namespaces)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.hosts.network import Host, HostNetwork, _netns_pids, start_host_network
from tests.paths import BACKEND, REPO_ROOT
from tests.polling import wait_for

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")
RELAY = str(Path(__file__).with_name("relay.py"))
PORT = 8000  # every host has its own ports
# A node silent this long is lost. 6 s failed twice in full suites on a loaded 2-core machine
# ("node 1 stopped answering" while its agent was only starved of CPU); the link-down tests
# wait about this long, so it stays short.
NODE_TIMEOUT_S = 10
ADMIN, ADMIN_PASSWORD = "admin", "admin-change-me"
OWNER, OWNER_PASSWORD = "olivia", "olivia-password-1"
USER, USER_PASSWORD = "alice", "alice-password-1"
TERMINAL = ("succeeded", "failed", "cancelled")


class Api:
    """The gateway's HTTP API as one account sees it (``get``/``post`` as on a TestClient)."""

    def __init__(self, http: httpx.Client, token: str = "") -> None:
        self.http, self.token = http, token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, headers=self.headers, **kwargs)
        assert response.is_success, (method, path, response.status_code, response.text)
        return response.json()

    def job(self, job_id: int) -> dict:
        return self.call("GET", f"/jobs/{job_id}")

    def finished(self, job_id: int) -> dict | None:
        job = self.job(job_id)
        return job if job["status"] in TERMINAL else None


@dataclass
class Platform:
    net: HostNetwork
    root: Path  # the test's own files (logs), outside every host's private disks
    gateway_dir: Path  # the gateway's database and storage: private to the gateway host
    http: httpx.Client
    gateway_process: subprocess.Popen | None = None
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)
    admin: Api | None = None
    owner: Api | None = None
    user: Api | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def gateway_address(self) -> str:
        return f"{self.net.gateway.address}:{PORT}"

    # -- the gateway ----------------------------------------------------------------------
    def start_gateway(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONPATH": str(BACKEND),
            "DISTLM_HOST": self.net.gateway.address,
            "DISTLM_PORT": str(PORT),
            "DISTLM_LOCAL_NODE": "false",  # the gateway host lends nothing
            "DISTLM_SECRET_KEY": self.secret_key,
            "DISTLM_DATABASE_URL": f"sqlite:///{self.gateway_dir / 'gateway.db'}",
            "DISTLM_STORAGE_PATH": str(self.gateway_dir / "storage"),
            "DISTLM_DATA_ROOT": str(self.gateway_dir / "data"),
            "DISTLM_ARGON2_TIME_COST": "1",
            "DISTLM_ARGON2_MEMORY_KIB": "1024",
            # The module's logins outlive the default 15 minutes on a slow machine (its tests
            # took 17 in one full suite, and the last ones got 401 "access token expired").
            "DISTLM_ACCESS_TOKEN_EXPIRE_MINUTES": "240",
            "DISTLM_ADMIN_USERNAME": ADMIN,
            "DISTLM_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "NODE_HEARTBEAT_INTERVAL": "1",
            "NODE_TIMEOUT": str(NODE_TIMEOUT_S),
            "DISTLM_DISPATCH_INTERVAL_S": "0.3",
        }
        with open(self.root / "gateway.log", "ab") as out:
            self.gateway_process = self.net.gateway.popen(
                [PYTHON, "-m", "app.launcher"], env=env, cwd=REPO_ROOT, stdout=out, stderr=out
            )

        def healthy() -> bool:
            assert self.gateway_process and self.gateway_process.poll() is None, self.log(
                "gateway.log"
            )
            try:
                return self.http.get("/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout_s=120, what="the gateway to be healthy", every_s=0.3)

    def kill_gateway(self) -> None:
        """SIGKILL the launcher and everything it started: no goodbye, no cleanup."""
        assert self.gateway_process is not None
        os.killpg(self.gateway_process.pid, signal.SIGKILL)
        self.gateway_process.wait(timeout=10)

    def accounts(self) -> None:
        self.admin = Api(self.http, self.login(ADMIN, ADMIN_PASSWORD))
        for name, password, role in (
            (OWNER, OWNER_PASSWORD, "node_owner"),
            (USER, USER_PASSWORD, "user"),
        ):
            self.admin.call(
                "POST",
                "/auth/register",
                json={"username": name, "password": password, "role": role},
            )
        self.owner = Api(self.http, self.login(OWNER, OWNER_PASSWORD))
        self.user = Api(self.http, self.login(USER, USER_PASSWORD))

    def login(self, username: str, password: str) -> str:
        answer = self.http.post("/auth/token", data={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
        return answer.json()["access_token"]

    # -- the nodes ------------------------------------------------------------------------
    def start_agent(self, host: Host) -> subprocess.Popen:
        """`distlm-node` on ``host``: 2 CPUs, its files on the host's own disk (/tmp), its
        Ray serving at the address it finds towards the gateway (the host has no default
        route); the owner's login in its environment only."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/tmp/home",
            "PYTHONPATH": str(BACKEND),
            "DISTLM_NODE_USERNAME": OWNER,
            "DISTLM_NODE_PASSWORD": OWNER_PASSWORD,
        }
        command = [
            PYTHON,
            "-m",
            "agent",
            "--coordinator-address",
            self.gateway_address,
            "--hostname",
            host.name,
            "--cpu",
            "--cpus",
            "2",
            "--memory-gb",
            "2",
            "--object-store-mb",
            "100",
            "--credential-file",
            "/tmp/distlm/node.json",
            "--heartbeat-interval",
            "1",
        ]  # fmt: skip  (its Ray's address: found on its route to the gateway)
        with open(self.root / f"{host.name}.log", "ab") as out:
            agent = host.popen(command, env=env, cwd=REPO_ROOT, stdout=out, stderr=out)
        self.agents[host.name] = agent
        return agent

    def node_id(self, host: Host) -> int:
        assert self.admin is not None
        nodes = self.admin.call("GET", "/nodes", params={"limit": 100})["items"]
        return next(n["id"] for n in nodes if n["hostname"] == host.name)

    def approve_when_registered(self, host: Host) -> int:
        assert self.admin is not None
        node_id = wait_for(
            lambda: self.try_node_id(host), timeout_s=60, what=f"{host.name} to register"
        )
        self.admin.call("POST", f"/nodes/{node_id}/approve")
        return node_id

    def try_node_id(self, host: Host) -> int | None:
        try:
            return self.node_id(host)
        except StopIteration:
            return None

    def node_status(self, host: Host) -> str:
        assert self.admin is not None
        return self.admin.call("GET", f"/nodes/{self.node_id(host)}")["status"]

    def host_of(self, node_id: int) -> Host:
        return next(h for h in self.net.nodes if self.node_id(h) == node_id)

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def ray_processes_on(self, host: Host) -> list[str]:
        """Command lines of Ray's processes in the host's network namespace."""
        found = []
        for pid in _netns_pids(host.namespace):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if any(mark in command for mark in ("raylet", "gcs_server", "ray::", "ray start")):
                found.append(command)
        return found


@contextmanager
def running_platform(root: Path, node_count: int = 2) -> Iterator[Platform]:
    """A gateway host running the launcher (jobs on the nodes' own Ray) and ``node_count``
    node hosts running approved agents; each node host has an empty disk over the gateway's
    directory and its own /tmp."""
    gateway_dir = root / "gateway"
    gateway_dir.mkdir(parents=True)
    with start_host_network(node_count, private_paths=[gateway_dir]) as net:
        socket_path = root / "api.sock"
        net.gateway.popen(
            [PYTHON, RELAY, str(socket_path), net.gateway.address, str(PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(socket_path.exists, timeout_s=20, what="the API relay")
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://gateway", timeout=30) as http:
            platform = Platform(net, root, gateway_dir, http)
            platform.start_gateway()
            platform.accounts()
            for host in net.nodes:
                platform.start_agent(host)
                platform.approve_when_registered(host)
            for host in net.nodes:
                wait_for(
                    lambda host=host: platform.node_status(host) == "online",
                    timeout_s=120,
                    what=lambda host=host: platform.log(f"{host.name}.log"),
                )
            yield platform


def wait_until_finished(api: Api, job_id: int, timeout_s: float = 600) -> dict:
    return wait_for(
        lambda: api.finished(job_id),
        timeout_s=timeout_s,
        every_s=0.5,
        what=lambda: api.job(job_id),
    )
