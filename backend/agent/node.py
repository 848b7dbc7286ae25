"""The node agent's logic, free of argparse so tests can call it: talk to the gateway,
describe this machine, run its Ray worker and send heartbeats until told to stop.

It imports nothing of the gateway's packages: a node machine needs only httpx, psutil and
ray. The gateway's contract it relies on is the HTTP API (see README, "API")."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

log = logging.getLogger("distlm.agent")

GIB = 1024**3
DEFAULT_GATEWAY_PORT = 8000
DEFAULT_HEARTBEAT_S = 10.0
# A worker that dies sooner than this after starting counts as a failed start.
WORKER_QUICK_DEATH_S = 60.0
RUN_MARKER = "--- distlm-node:"  # starts each run's section of the Ray worker's log


# --- errors ------------------------------------------------------------------------------


class AgentError(Exception):
    """A failure the agent explains to its user and exits on."""

    exit_code = 1


class GatewayError(AgentError):
    """The gateway refused a request; carries its `{"error", "detail"}` body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.detail = detail


class NodeBannedError(GatewayError):
    exit_code = 3  # distinct, so a supervisor (systemd) can be told not to restart


class ApprovalTimeoutError(AgentError):
    exit_code = 4


class GatewayUnreachableError(AgentError):
    pass


class RayWorkerError(AgentError):
    pass


def error_from_response(response: httpx.Response) -> GatewayError:
    code, detail = f"http_{response.status_code}", response.reason_phrase or "request failed"
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get("error") or code)
            detail = str(body.get("detail") or detail)
    kind = NodeBannedError if code == "node_banned" else GatewayError
    return kind(response.status_code, code, detail)


# --- what the agent knows --------------------------------------------------------------


def gateway_url(address: str) -> str:
    """`HOST:PORT` as in the seeds' `--coordinator-address`, `HOST` (port 8000), or a URL."""
    address = address.strip().rstrip("/")
    if not address:
        raise ValueError("the gateway address is empty")
    if "://" in address:
        scheme = address.split("://", 1)[0].lower()
        if scheme not in {"http", "https"}:
            raise ValueError(f"the gateway address must be http(s), not {scheme}://")
        return address
    has_port = "]:" in address if address.startswith("[") else ":" in address
    return f"http://{address}" if has_port else f"http://{address}:{DEFAULT_GATEWAY_PORT}"


@dataclass(frozen=True)
class NodeResources:
    gpu: int
    cpu_cores: float
    memory_gb: float

    def as_json(self) -> dict[str, float]:
        return {"gpu": self.gpu, "cpu_cores": self.cpu_cores, "memory": self.memory_gb}


@dataclass(frozen=True)
class NodeIdentity:
    """Which node this agent speaks for. Without a credential (it is shown only once, at
    registration) the agent authenticates with its owner's login instead."""

    node_id: int
    hostname: str
    credential: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JoinInfo:
    node_id: int
    ray_address: str
    num_cpus: int
    num_gpus: int
    memory_gb: float
    resources: dict[str, float]
    labels: dict[str, str]
    heartbeat_interval_s: float
    # Ray's cluster token, should the gateway hand it out (Ray >= 2.5x enables token auth on
    # new local clusters; a node on another machine cannot join without it).
    ray_auth_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JoinInfo:
        return cls(
            node_id=int(body["node_id"]),
            ray_address=str(body["ray_address"]),
            num_cpus=int(body["num_cpus"]),
            num_gpus=int(body["num_gpus"]),
            memory_gb=float(body["memory_gb"]),
            resources={str(k): float(v) for k, v in body.get("resources", {}).items()},
            labels={str(k): str(v) for k, v in body.get("labels", {}).items()},
            heartbeat_interval_s=float(body.get("heartbeat_interval_s") or DEFAULT_HEARTBEAT_S),
            ray_auth_token=body.get("ray_auth_token") or None,
        )


# --- the gateway -------------------------------------------------------------------------


class GatewayClient:
    """The gateway's HTTP API as the agent uses it. Owner calls log in lazily (a restart
    with a stored node credential needs no password) and once more when the access token
    has expired."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._username = username
        self._password = password
        self._owner_token = token
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def can_log_in(self) -> bool:
        return bool(self._username and self._password)

    def _send(self, method: str, path: str, *, bearer: str | None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnreachableError(
                f"cannot reach the gateway at {self.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if not response.is_success:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise GatewayError(
                response.status_code, "bad_response", f"{method} {path} did not answer JSON"
            ) from exc

    def login(self) -> str:
        if not self.can_log_in:
            raise AgentError(
                "this step needs the node owner's login: pass --username and --password "
                "(or DISTLM_NODE_USERNAME / DISTLM_NODE_PASSWORD), or --token"
            )
        body = self._send(
            "POST",
            "/auth/token",
            bearer=None,
            data={"username": self._username, "password": self._password},
        )
        self._owner_token = str(body["access_token"])
        return self._owner_token

    def _as_owner(self, method: str, path: str, **kwargs: Any) -> Any:
        token = self._owner_token or self.login()
        try:
            return self._send(method, path, bearer=token, **kwargs)
        except GatewayError as exc:
            # Access tokens expire (an hour by default); a long-running agent logs in again.
            if exc.status != 401 or not self.can_log_in:
                raise
        return self._send(method, path, bearer=self.login(), **kwargs)

    def _as_node(self, identity: NodeIdentity, method: str, path: str, **kwargs: Any) -> Any:
        if identity.credential:
            return self._send(method, path, bearer=identity.credential, **kwargs)
        return self._as_owner(method, path, **kwargs)

    def me(self) -> dict[str, Any]:
        return self._as_owner("GET", "/auth/me")

    def list_nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        while True:
            page = self._as_owner("GET", "/nodes", params={"limit": 500, "offset": len(nodes)})
            nodes.extend(page["items"])
            if not page["items"] or len(nodes) >= int(page["total"]):
                return nodes

    def register_node(self, hostname: str, resources: NodeResources) -> dict[str, Any]:
        return self._as_owner(
            "POST", "/nodes/register", json={"hostname": hostname, "resources": resources.as_json()}
        )

    def join_info(self, identity: NodeIdentity) -> JoinInfo:
        return JoinInfo.from_json(self._as_node(identity, "GET", f"/nodes/{identity.node_id}/join"))

    def heartbeat(self, identity: NodeIdentity, sample: dict[str, float]) -> dict[str, Any]:
        path = f"/nodes/{identity.node_id}/heartbeat"
        return self._as_node(identity, "POST", path, json=sample)


# --- this machine ------------------------------------------------------------------------


def _visible_gpu_entries() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (None when unset): Ray and CUDA honour it, so do we."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry == "-1":
            break  # CUDA stops at the first invalid entry
        entries.append(entry)
    return entries


def _nvml_gpu_count() -> int | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError: no driver, no device
        return None


def _nvidia_smi(*args: str) -> list[str] | None:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        result = subprocess.run(
            [executable, *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _torch_gpu_count() -> int | None:
    try:
        import torch  # heavy, so the last resort (it also covers ROCm builds)
    except ImportError:
        return None
    try:
        return int(torch.cuda.device_count())
    except Exception:
        return None


def detect_gpus() -> int:
    """GPUs on this machine: NVML, then nvidia-smi, then torch.cuda; 0 when none answers."""
    count = _nvml_gpu_count()
    if count is None:
        lines = _nvidia_smi("-L")
        count = len([line for line in lines if line.startswith("GPU ")]) if lines else None
    if count is None:
        count = _torch_gpu_count()
    count = count or 0
    visible = _visible_gpu_entries()
    return count if visible is None else min(count, len(visible))


def detect_resources(
    *, cpus: float | None = None, memory_gb: float | None = None, gpus: int | None = None
) -> NodeResources:
    """What this machine offers; given values win over detected ones."""
    if cpus is None:
        cpus = float(psutil.cpu_count(logical=True) or os.cpu_count() or 1)
    if memory_gb is None:
        # Rounded down to 0.1 GB so the node never promises more than it has.
        memory_gb = math.floor(psutil.virtual_memory().total / GIB * 10) / 10
    if gpus is None:
        gpus = detect_gpus()
    return NodeResources(gpu=gpus, cpu_cores=cpus, memory_gb=memory_gb)


def _percent(value: float) -> float:
    return round(min(100.0, max(0.0, float(value))), 2)


def _gpu_indices() -> list[int] | None:
    visible = _visible_gpu_entries()
    if visible is None or not all(e.isdigit() for e in visible):
        return None  # unset, or UUIDs: report every device
    return [int(e) for e in visible]


def _nvml_gpu_sample() -> tuple[float, float] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            indices = _gpu_indices() or list(range(pynvml.nvmlDeviceGetCount()))
            utilization, used = [], 0
            for index in indices:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                utilization.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                used += pynvml.nvmlDeviceGetMemoryInfo(handle).used
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    if not utilization:
        return None
    return sum(utilization) / len(utilization), used / GIB


def _nvidia_smi_gpu_sample() -> tuple[float, float] | None:
    lines = _nvidia_smi(
        "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"
    )
    if not lines:
        return None
    wanted = _gpu_indices()
    utilization, used_mib = [], 0.0
    for line in lines:
        try:
            index, util, memory = (float(part) for part in line.split(","))
        except ValueError:
            continue  # "[N/A]" on some boards
        if wanted is None or int(index) in wanted:
            utilization.append(util)
            used_mib += memory
    if not utilization:
        return None
    return sum(utilization) / len(utilization), used_mib / 1024


def sample_metrics(gpus: int = 0) -> dict[str, float]:
    """One heartbeat sample: CPU and memory from psutil; GPU figures from NVML (pynvml) or
    nvidia-smi when the node has GPUs, else none. Not torch.cuda: asking it for device
    memory would hold a CUDA context (hundreds of MB per GPU) in the agent for its lifetime.
    """
    memory = psutil.virtual_memory()
    sample = {
        "cpu_percent": _percent(psutil.cpu_percent(interval=None)),
        "memory_used_gb": round((memory.total - memory.available) / GIB, 3),
        "memory_percent": _percent(memory.percent),
    }
    if gpus > 0:
        gpu = _nvml_gpu_sample() or _nvidia_smi_gpu_sample()
        if gpu is not None:
            sample["gpu_utilization"] = _percent(gpu[0])
            sample["gpu_memory_used_gb"] = round(gpu[1], 3)
    return sample


# --- registration and approval -----------------------------------------------------------


def default_credential_file(hostname: str) -> Path:
    return Path.home() / ".distlm" / f"node-{hostname}.json"


class CredentialStore:
    """The node id and its one-time credential, kept so a restart reuses the node."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> NodeIdentity | None:
        try:
            body = json.loads(self.path.read_text())
            return NodeIdentity(
                node_id=int(body["node_id"]),
                hostname=str(body["hostname"]),
                credential=body.get("credential") or None,
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise AgentError(
                f"cannot read the credential file {self.path} ({type(exc).__name__}); "
                "move it away to register the node again"
            ) from exc

    def save(self, identity: NodeIdentity, *, gateway: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {
            "gateway": gateway,
            "node_id": identity.node_id,
            "hostname": identity.hostname,
            "credential": identity.credential,
        }
        # Created 0600 from the start (never readable by others, even briefly), then
        # renamed over the old file so a crash cannot leave half a secret behind.
        partial = self.path.with_name(self.path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.chmod(partial, 0o600)
            json.dump(body, out, indent=2)
            out.write("\n")
        os.replace(partial, self.path)


@dataclass(frozen=True)
class Registration:
    identity: NodeIdentity
    how: str  # "stored" (credential file) | "registered" (new node) | "found" (by hostname)


def _identity_still_valid(client: GatewayClient, identity: NodeIdentity) -> bool:
    """Any answer but 'unknown node or wrong credential' proves the stored identity (the
    file may come from a gateway whose database was reset)."""
    try:
        client.join_info(identity)
    except NodeBannedError:
        raise
    except GatewayError as exc:
        if exc.code == "bad_node_credential" or exc.status == 404:
            return False
        if exc.status != 409:  # 409: pending approval or no cluster, but a valid node
            raise
    return True


def _find_own_node(client: GatewayClient, hostname: str) -> int:
    owner_id = client.me()["id"]
    for node in client.list_nodes():
        if node["hostname"] == hostname and node["owner_id"] == owner_id:
            return int(node["id"])
    raise AgentError(f"the gateway says '{hostname}' is registered, but not among your nodes")


def register_or_reuse(
    client: GatewayClient, store: CredentialStore, *, hostname: str, resources: NodeResources
) -> Registration:
    """The node this machine is: the stored one if the gateway still knows it, else a new
    registration, else (this owner registered the hostname before) the existing node."""
    stored = store.load()
    if stored is not None:
        if stored.hostname != hostname:
            raise AgentError(
                f"{store.path} holds node '{stored.hostname}', not '{hostname}': "
                "pass another --credential-file"
            )
        if _identity_still_valid(client, stored):
            return Registration(stored, "stored")
        log.warning(
            "node %s from %s is unknown to %s; registering again",
            stored.node_id,
            store.path,
            client.base_url,
        )
    try:
        body = client.register_node(hostname, resources)
        identity = NodeIdentity(int(body["id"]), hostname, str(body["credential"]))
        how = "registered"
    except GatewayError as exc:
        if exc.code != "node_exists":
            raise
        identity = NodeIdentity(_find_own_node(client, hostname), hostname, None)
        how = "found"
        log.warning(
            "you registered '%s' before (node %s); its one-time credential is not in %s, "
            "so the agent authenticates with your login instead",
            hostname,
            identity.node_id,
            store.path,
        )
    store.save(identity, gateway=client.base_url)
    return Registration(identity, how)


def wait_for_approval(
    client: GatewayClient,
    identity: NodeIdentity,
    *,
    stop: threading.Event,
    timeout_s: float | None = None,
    poll_s: float = 5.0,
    while_pending: Callable[[], None] | None = None,
) -> JoinInfo | None:
    """Poll the join endpoint until the node is approved (the gateway hands out what joining
    the cluster needs only then). None if `stop` is set first; `timeout_s=None` waits on."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    announced = False
    while not stop.is_set():
        try:
            return client.join_info(identity)
        except GatewayUnreachableError as exc:
            # Approval can take hours; a gateway restart meanwhile is no reason to quit.
            log.warning("%s; still waiting", exc)
        except GatewayError as exc:
            if exc.code != "node_not_approved":
                raise
        if not announced:
            log.info("node %s is waiting for an admin's approval", identity.node_id)
            announced = True
        if while_pending is not None:
            while_pending()
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ApprovalTimeoutError(
                f"node {identity.node_id} was not approved within {timeout_s:g} s; "
                "ask an admin to approve it (POST /nodes/{id}/approve) and start again"
            )
        stop.wait(poll_s if remaining is None else min(poll_s, remaining))
    return None


# --- the Ray worker ----------------------------------------------------------------------


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")  # the venv's, even if not activated
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise RayWorkerError("the `ray` command is not installed: pip install 'ray[default]'")
    return found


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


# Loaded here, not in the forked child, where importing could deadlock.
_LIBC = _load_libc()
PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:
    """Runs in the child before exec: should the agent die without stopping the worker
    (SIGKILL, a crash), the kernel sends the worker SIGTERM, so no orphan keeps offering
    the node to the cluster. Linux only; elsewhere `stop()` is the only way."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
    ) -> None:
        self.join = join
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
            "--disable-usage-stats",
            "--log-style=record",
        ]
        if join.labels:
            command.append(f"--labels={labels_arg(join.labels)}")
        if self.object_store_mb:
            command.append(f"--object-store-memory={self.object_store_mb * 1024 * 1024}")
        return command

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def environment(self) -> dict[str, str]:
        """Ray's token authentication, when the cluster uses it. Ray never sends a local
        token to an explicit address on its own, so the agent opts in only with a token
        from the gateway or a token file the owner named."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.join.ray_auth_token:
            env.pop("RAY_AUTH_TOKEN_PATH", None)
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.join.ray_auth_token)
        elif self.auth_token_file is not None:
            env.pop("RAY_AUTH_TOKEN", None)
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.auth_token_file))
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
    """Keeps the node's Ray worker running. A worker that exits (the head restarted, the
    network dropped) starts again with fresh join info, since the cluster address may have
    changed; too many quick deaths in a row end the agent."""

    def __init__(
        self,
        client: GatewayClient,
        identity: NodeIdentity,
        *,
        log_path: Path,
        object_store_mb: int | None,
        auth_token_file: Path | None,
        max_restarts: int,
    ) -> None:
        self.client = client
        self.identity = identity
        self.log_path = log_path
        self.object_store_mb = object_store_mb
        self.auth_token_file = auth_token_file
        self.max_restarts = max_restarts
        self.worker: RayWorker | None = None
        self.quick_deaths = 0

    def start(self, join: JoinInfo) -> None:
        worker = RayWorker(
            join,
            log_path=self.log_path,
            object_store_mb=self.object_store_mb,
            auth_token_file=self.auth_token_file,
        )
        self.worker = worker
        worker.start()
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
        if worker is None or worker.is_running():
            return
        if worker.refused_by_cluster_auth():
            raise RayWorkerError(worker.exit_explanation())  # retrying cannot help
        lived_s = time.monotonic() - worker.started_at
        self.quick_deaths = self.quick_deaths + 1 if lived_s < WORKER_QUICK_DEATH_S else 1
        log.warning("Ray worker died after %.0f s: %s", lived_s, worker.exit_explanation())
        if self.quick_deaths > self.max_restarts:
            raise RayWorkerError(
                f"the Ray worker died {self.quick_deaths} times in a row; see {self.log_path}"
            )
        try:
            self.start(self.client.join_info(self.identity))
        except NodeBannedError:
            raise
        except (GatewayUnreachableError, GatewayError, RayWorkerError) as exc:
            # Try again at the next heartbeat; the gateway may be restarting.
            log.warning("cannot restart the Ray worker yet: %s", exc)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            log.info("Ray worker stopped")
            self.worker = None


# --- the agent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    gateway_url: str
    hostname: str
    resources: NodeResources
    credential_file: Path
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    start_ray: bool = True
    approval_timeout_s: float | None = None  # None: wait until approved or stopped
    approval_poll_s: float = 5.0
    heartbeat_interval_s: float | None = None  # None: what the gateway asks for
    max_heartbeats: int | None = None  # None: until stopped
    object_store_mb: int | None = None  # None: Ray's default share of memory
    ray_auth_token_file: Path | None = None  # the cluster's Ray token, if it uses one
    ray_log_file: Path | None = None  # None: next to the credential file
    max_worker_restarts: int = 5


@dataclass(frozen=True)
class AgentResult:
    node_id: int
    how: str
    heartbeats: int


def _heartbeat_loop(
    client: GatewayClient,
    identity: NodeIdentity,
    config: AgentConfig,
    *,
    stop: threading.Event,
    interval_s: float,
    supervisor: WorkerSupervisor | None,
) -> int:
    sent = 0
    while not stop.is_set():
        if supervisor is not None:
            supervisor.check()
        sample = sample_metrics(config.resources.gpu)
        try:
            answer = client.heartbeat(identity, sample)
        except (GatewayUnreachableError, GatewayError) as exc:
            # Outages and server errors heal; a refusal (banned, bad credential) does not.
            if isinstance(exc, GatewayError) and exc.status < 500 and exc.status != 429:
                raise
            log.warning("heartbeat failed, retrying in %g s: %s", interval_s, exc)
        else:
            sent += 1
            log.debug("heartbeat %s: %s", sent, sample)
            if config.heartbeat_interval_s is None:
                interval_s = float(answer.get("next_heartbeat_in_s") or interval_s)
            if sent == 1:
                log.info(
                    "node %s is %s; a heartbeat every %g s",
                    identity.node_id,
                    answer.get("status", "online"),
                    interval_s,
                )
            if config.max_heartbeats is not None and sent >= config.max_heartbeats:
                break
        stop.wait(interval_s)
    return sent


def _warn_if_resources_differ(join: JoinInfo, wanted: NodeResources) -> None:
    if join.num_gpus != wanted.gpu or join.num_cpus != max(1, int(wanted.cpu_cores)):
        log.warning(
            "the gateway has node %s as %s CPU / %s GPU, not %g CPU / %s GPU; register "
            "under another --hostname to change what it offers",
            join.node_id,
            join.num_cpus,
            join.num_gpus,
            wanted.cpu_cores,
            wanted.gpu,
        )


def run_agent(
    config: AgentConfig,
    *,
    stop: threading.Event | None = None,
    client: GatewayClient | None = None,
) -> AgentResult:
    """Register or reuse the node → wait for approval → start its Ray worker (unless
    `start_ray` is off) → heartbeat until `stop` is set or `max_heartbeats` are sent. The
    worker is always stopped on the way out, whatever ended the run."""
    stop = stop or threading.Event()
    own_client = client is None
    if client is None:
        client = GatewayClient(
            config.gateway_url,
            username=config.username,
            password=config.password,
            token=config.token,
        )
    psutil.cpu_percent(interval=None)  # the first reading only opens psutil's CPU window
    supervisor: WorkerSupervisor | None = None
    try:
        registration = register_or_reuse(
            client,
            CredentialStore(config.credential_file),
            hostname=config.hostname,
            resources=config.resources,
        )
        identity = registration.identity
        log.info(
            "node %s ('%s', %s) at %s",
            identity.node_id,
            identity.hostname,
            registration.how,
            client.base_url,
        )

        def beat_while_pending() -> None:
            # Lets the admin see that a pending node is alive before approving it.
            try:
                client.heartbeat(identity, sample_metrics(config.resources.gpu))
            except GatewayUnreachableError:
                pass
            except GatewayError as exc:
                if exc.status < 500:
                    raise

        try:
            join = wait_for_approval(
                client,
                identity,
                stop=stop,
                timeout_s=config.approval_timeout_s,
                poll_s=config.approval_poll_s,
                while_pending=beat_while_pending,
            )
        except GatewayError as exc:
            if exc.code != "no_cluster" or config.start_ray:
                raise
            join = None  # approved, and without Ray there is no cluster to join anyway
        if stop.is_set():
            return AgentResult(identity.node_id, registration.how, 0)
        if join is not None:
            _warn_if_resources_differ(join, config.resources)
        if config.start_ray:
            assert join is not None
            supervisor = WorkerSupervisor(
                client,
                identity,
                log_path=config.ray_log_file or config.credential_file.with_suffix(".ray.log"),
                object_store_mb=config.object_store_mb,
                auth_token_file=config.ray_auth_token_file,
                max_restarts=config.max_worker_restarts,
            )
            supervisor.start(join)
        interval_s = config.heartbeat_interval_s or (
            join.heartbeat_interval_s if join is not None else DEFAULT_HEARTBEAT_S
        )
        sent = _heartbeat_loop(
            client, identity, config, stop=stop, interval_s=interval_s, supervisor=supervisor
        )
        return AgentResult(identity.node_id, registration.how, sent)
    finally:
        if supervisor is not None:
            supervisor.stop()
        if own_client:
            client.close()
