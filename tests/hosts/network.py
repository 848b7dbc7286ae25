"""Separate machines on one Linux machine, for tests that span hosts.

``start_host_network(node_count=2, private_paths=[...])`` makes a gateway host and node hosts,
each a Linux network namespace with its own address in 198.51.100.0/24 (TEST-NET-2) on a
bridge the harness makes in the root namespace. The bridge has no address, so the root
namespace is not a host; no namespace has a default route, so nothing a test sends can leave
the machine (only loopback and the hosts' own addresses are reachable).

Every host also has its own UTS namespace (``hostname`` is the host's name) and an /etc/hosts
naming all hosts of its network. Each node host has its own mount namespace in which an empty
tmpfs is mounted over each private path (and over /tmp unless ``private_tmp=False``): nothing
the gateway host keeps there is visible to a node, nothing a node writes there reaches the
gateway or another node, and what one node process writes is visible to the next process on
the same node (one disk per host). Everything else (the code, the virtualenv) is seen as is,
even from a clone under /tmp (bound back over the node's empty /tmp).

Processes started through a host are killed (their process group, then anything left in the
host's namespace) when the network closes, even when the test failed. Names embed the pid of
the process that made them, so a later run removes the leftovers of a crashed one without
touching those of a live session.

Where namespaces cannot be made (not root, no ``ip``, EPERM) ``start_host_network`` skips the
test with the reason; it never passes silently.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.paths import REPO_ROOT

SUBNET_PREFIX = "198.51.100."  # TEST-NET-2: never routed on the internet
PREFIX_LENGTH = 24
GATEWAY_ADDRESS = SUBNET_PREFIX + "10"
FIRST_NODE_OCTET = 11
MAX_NODES = 99  # veth names end in v<index>; two digits keep them within 15 characters
NAME_PREFIX = "dlh"  # "distlm host"
# dlh<pid in hex>-<2 hex random>: the bridge adds "br", root-side veths "v<index>" (<= 15 chars)
NAME_PATTERN = re.compile(rf"^{NAME_PREFIX}([0-9a-f]{{1,6}})-([0-9a-f]{{2}})")
NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*
KEEP_DIR = "/mnt"  # where a node host holds the code for a moment (its own mount there)
IP_TIMEOUT_S = 10.0
TERM_GRACE_S = 3.0  # how long processes get to exit on SIGTERM at close
Argv = Sequence[str | os.PathLike[str]]


def code_under(private_paths: Iterable[Path]) -> tuple[Path, ...]:
    """The code (the repository, the virtualenv) that lies under a node host's empty disks,
    outermost only: a clone under /tmp, whose /tmp a node host does not share."""
    code = sorted({REPO_ROOT.resolve(), Path(sys.prefix).resolve()}, key=lambda p: len(p.parts))
    hidden: list[Path] = []
    for path in code:
        under_disk = any(path.is_relative_to(disk) for disk in private_paths)
        if under_disk and not any(path.is_relative_to(outer) for outer in hidden):
            hidden.append(path)
    return tuple(hidden)


class HostNetworkError(RuntimeError):
    """A namespace, link or host process could not be set up or torn down."""


def _ip(*args: str, check: bool = True, timeout_s: float = IP_TIMEOUT_S) -> str:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and result.returncode != 0:
        raise HostNetworkError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _disable_ipv6(interface: str) -> None:
    # Without it the bridge and root-side veths get link-local IPv6 addresses, which would
    # make the root namespace reachable from the hosts.
    knob = Path("/proc/sys/net/ipv6/conf") / interface / "disable_ipv6"
    if knob.exists():
        knob.write_text("1")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it is dead but not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _netns_pids(namespace: str) -> list[int]:
    output = _ip("netns", "pids", namespace, check=False)
    return [int(word) for word in output.split() if word.isdigit()]


def _kill_namespace_processes(namespace: str, deadline: float) -> list[int]:
    """SIGKILL everything in the namespace (daemons that left their process group too);
    the pids still there at the deadline."""
    while True:
        pids = _netns_pids(namespace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.05)


def _namespaces() -> list[str]:
    # "name" or "name (id: 3)" per line
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _links() -> list[str]:
    names = []
    for line in _ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


@functools.cache
def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can (probed once)."""
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "unshare", "nsenter", "mount", "sh", "sleep"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    probe = f"{NAME_PREFIX}{os.getpid():x}-{secrets.token_hex(1)}"
    namespace, bridge = f"{probe}-probe", f"{probe}br"
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", bridge, "type", "bridge")
        script = "mount -t tmpfs distlm-probe /mnt && hostname probe"
        _run_checked(["ip", "netns", "exec", namespace, *_holder_unshare(), "sh", "-c", script])
    except (HostNetworkError, OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        _ip("link", "del", bridge, check=False)
        _ip("netns", "del", namespace, check=False)
    return None


def skip_unless_namespaces() -> None:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


def _holder_unshare() -> list[str]:
    return ["unshare", "--mount", "--uts", "--propagation", "private", "--"]


def _run_checked(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if result.returncode != 0:
        raise HostNetworkError(f"{shlex.join(argv)}: {result.stderr.strip() or result.returncode}")


def remove_stale_networks(timeout_s: float = 15.0) -> list[str]:
    """Remove namespaces, links and /etc/netns entries of this harness whose maker's pid is no
    longer alive (a crashed run), killing processes left in them; the names removed.

    Names whose pid is alive belong to a live session (or to a reused pid) and stay.
    """
    deadline = time.monotonic() + timeout_s

    def stale(name: str) -> bool:
        match = NAME_PATTERN.match(name)
        return bool(match) and not pid_alive(int(match.group(1), 16))

    removed = []
    for namespace in filter(stale, _namespaces()):
        _kill_namespace_processes(namespace, deadline)
        _ip("netns", "del", namespace, check=False)
        removed.append(namespace)
    # veths first (deleting one end deletes the peer), bridges after
    for link in sorted(filter(stale, _links()), key=lambda name: name.endswith("br")):
        _ip("link", "del", link, check=False)
        removed.append(link)
    if NETNS_ETC.is_dir():
        for entry in NETNS_ETC.iterdir():
            if stale(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


@dataclass
class Host:
    """One machine: a network namespace, a UTS namespace and (on nodes) a private disk.

    ``popen`` and ``run`` start processes inside all of them. A holder process keeps the
    host's namespaces alive for the network's lifetime.
    """

    name: str  # also the hostname inside the host, and its name in the hosts' /etc/hosts
    address: str
    namespace: str  # the `ip netns` name
    veth: str  # the root-namespace end of the host's cable, on the bridge
    private_paths: tuple[Path, ...]
    holder: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def _enter(self, cwd: str | os.PathLike[str] | None) -> list[str]:
        if self.holder is None:
            raise HostNetworkError(f"host {self.name} is not running")
        workdir = os.path.abspath(cwd if cwd is not None else os.getcwd())
        target = str(self.holder.pid)
        nsenter = shutil.which("nsenter") or "nsenter"  # found whatever PATH ``env`` has
        return [nsenter, "--target", target, "--net", "--mount", "--uts", f"--wd={workdir}"]

    def popen(
        self,
        argv: Argv,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        **popen_kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` on this host (a server, an agent) in a process group of its own,
        killed when the network closes. ``cwd`` is resolved in the host's filesystem
        (default: the current directory)."""
        process = subprocess.Popen(
            [*self._enter(cwd), "--", *map(os.fspath, argv)],
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            **popen_kwargs,
        )
        self.processes.append(process)
        return process

    def run(
        self,
        argv: Argv,
        *,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host to completion, capturing its output as text; its process
        group is killed and ``subprocess.TimeoutExpired`` raised after ``timeout_s``."""
        process = self.popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = process.communicate(input, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.communicate()
            raise
        finally:
            if process.returncode is not None:
                self.processes.remove(process)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check:
            result.check_returncode()
        return result

    def path(self, path: str | os.PathLike[str]) -> Path:
        """``path`` as this host sees it, reachable from the test process (through the
        holder's root: a node's private disk is readable and writable from outside)."""
        if self.holder is None:
            raise HostNetworkError(f"host {self.name} is not running")
        return Path(f"/proc/{self.holder.pid}/root") / Path(os.path.abspath(path)).relative_to("/")

    def link_down(self) -> None:
        """Cut the host's cable: its end on the bridge goes down, so packets to and from the
        host vanish both ways (no reset, no error at once), as when a machine drops off the
        network; its address and processes stay."""
        _ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.veth, "up")

    def link_is_up(self) -> bool:
        flags = _ip("-o", "link", "show", self.veth).partition("<")[2].partition(">")[0]
        return "UP" in flags.split(",")

    def _start(self, hosts_file: str, timeout_s: float) -> None:
        etc = NETNS_ETC / self.namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(hosts_file)
        steps = [f"hostname {shlex.quote(self.name)}"]
        # The code (a clone under /tmp, say) stays visible: bound aside before the empty
        # disks go on, and moved back onto its path inside them.
        kept = code_under(self.private_paths)
        if kept:
            steps.append(f"mount -t tmpfs distlm-keep-{self.name} {KEEP_DIR}")
        for index, code in enumerate(kept):
            steps.append(f"mkdir {KEEP_DIR}/{index}")
            steps.append(f"mount --bind {shlex.quote(str(code))} {KEEP_DIR}/{index}")
        # parents first, so a nested private path is made inside its parent's tmpfs
        for path in sorted(self.private_paths, key=lambda p: len(p.parts)):
            mode = path.stat().st_mode & 0o7777 if path.is_dir() else 0o755
            quoted = shlex.quote(str(path))
            steps.append(f"mkdir -p {quoted}")
            steps.append(f"mount -t tmpfs -o mode={mode:o} distlm-{self.name} {quoted}")
        for index, code in enumerate(kept):
            steps.append(f"mkdir -p {shlex.quote(str(code))}")
            steps.append(f"mount --move {KEEP_DIR}/{index} {shlex.quote(str(code))}")
        if kept:
            steps.append(f"umount {KEEP_DIR}")
        # The mount namespace copied the root's /run/netns, which pins every other network
        # namespace that exists now (other sessions' too) until this host ends: drop it.
        steps.append("{ umount -l /run/netns 2>/dev/null || true; }")
        script = " && ".join(steps) + " && echo ready && exec sleep infinity"
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *_holder_unshare(), "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.holder.stdout is not None and self.holder.stderr is not None
        output = b""
        deadline = time.monotonic() + timeout_s
        while b"ready\n" not in output and time.monotonic() < deadline:
            readable, _, _ = select.select(
                [self.holder.stdout], [], [], deadline - time.monotonic()
            )
            if not readable:
                break
            chunk = os.read(self.holder.stdout.fileno(), 4096)
            if not chunk:
                break
            output += chunk
        if b"ready\n" not in output:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.holder.pid, signal.SIGKILL)
            _, error = self.holder.communicate(timeout=IP_TIMEOUT_S)
            self.holder = None
            raise HostNetworkError(f"host {self.name} did not start: {error.decode().strip()}")
        self.holder.stdout.close()
        self.holder.stderr.close()

    def _reap(self, deadline: float) -> None:
        """SIGKILL anything still in the namespace (daemons that left their group, the
        holder) and reap the processes started here."""
        left = _kill_namespace_processes(self.namespace, deadline)
        for process in [*self.processes, *([self.holder] if self.holder else [])]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.processes.clear()
        self.holder = None
        if left:
            raise HostNetworkError(f"processes {left} outlived host {self.name}")


def _signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


class HostNetwork:
    """A gateway host and node hosts on one bridge; close it (or use ``with``) to remove all.

    Addresses: the gateway is 198.51.100.10, node ``i`` (1-based) is 198.51.100.(10 + i).
    """

    def __init__(
        self,
        node_count: int = 2,
        *,
        private_paths: Iterable[str | os.PathLike[str]] = (),
        private_tmp: bool = True,
        timeout_s: float = 15.0,
    ) -> None:
        if not 1 <= node_count <= MAX_NODES:
            raise ValueError(f"node_count must be 1..{MAX_NODES}, not {node_count}")
        self.tag = f"{NAME_PREFIX}{os.getpid():x}-{secrets.token_hex(1)}"
        self.bridge = f"{self.tag}br"
        paths = {Path(os.path.abspath(path)) for path in private_paths}
        for path in paths:
            hidden = [code for code in (REPO_ROOT, Path(sys.prefix)) if code.is_relative_to(path)]
            if hidden:
                raise ValueError(f"a disk over {path} would hide {hidden[0]} from node hosts")
        if private_tmp:
            paths.add(Path("/tmp"))
        node_paths = tuple(sorted(paths))

        def host(index: int, name: str, address: str, private: tuple[Path, ...]) -> Host:
            return Host(name, address, f"{self.tag}-{name}", f"{self.tag}v{index}", private)

        self.gateway = host(0, "gateway", GATEWAY_ADDRESS, ())
        self.nodes = [
            host(i, f"node{i}", f"{SUBNET_PREFIX}{FIRST_NODE_OCTET + i - 1}", node_paths)
            for i in range(1, node_count + 1)
        ]
        self._closed = False
        try:
            self._build(timeout_s)
        except BaseException:
            with contextlib.suppress(HostNetworkError):
                self.close()
            raise

    @property
    def hosts(self) -> list[Host]:
        return [self.gateway, *self.nodes]

    def _build(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        _ip("link", "add", self.bridge, "type", "bridge")
        _disable_ipv6(self.bridge)
        _ip("link", "set", self.bridge, "up")
        hosts_file = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n" + "".join(
            f"{host.address} {host.name}\n" for host in self.hosts
        )
        for host in self.hosts:
            _ip("netns", "add", host.namespace)
            # the host's end is made inside its namespace: an "eth0" never exists outside
            veth_pair = ["type", "veth", "peer", "name", "eth0", "netns", host.namespace]
            _ip("link", "add", host.veth, *veth_pair)
            _disable_ipv6(host.veth)
            _ip("link", "set", host.veth, "master", self.bridge, "up")
            inside = ["-n", host.namespace]
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{host.address}/{PREFIX_LENGTH}", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            host._start(hosts_file, max(1.0, deadline - time.monotonic()))

    def namespace_names(self) -> list[str]:
        return [host.namespace for host in self.hosts]

    def link_names(self) -> list[str]:
        return [self.bridge, *(host.veth for host in self.hosts)]

    def close(self, timeout_s: float = 15.0) -> None:
        """Kill every host's processes, delete namespaces, veths, the bridge and /etc/netns
        entries; idempotent. Raises HostNetworkError, after removing all it could, if
        anything is left."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        problems: list[str] = []
        # SIGTERM every process group started on any host, SIGKILL those left after a grace
        live = [p for host in self.hosts for p in host.processes if p.poll() is None]
        for process in live:
            _signal_group(process, signal.SIGTERM)
        grace = time.monotonic() + min(TERM_GRACE_S, timeout_s / 3)
        for process in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, grace - time.monotonic()))
        for process in live:
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
        for host in self.hosts:
            try:
                host._reap(deadline)
            except (HostNetworkError, OSError) as error:
                problems.append(str(error))
        for host in self.hosts:
            _ip("netns", "del", host.namespace, check=False)
            _ip("link", "del", host.veth, check=False)
            shutil.rmtree(NETNS_ETC / host.namespace, ignore_errors=True)
        _ip("link", "del", self.bridge, check=False)
        left = [name for name in _namespaces() if name.startswith(self.tag)]
        left += [name for name in _links() if name.startswith(self.tag)]
        if left:
            problems.append(f"still present: {left}")
        if problems:
            raise HostNetworkError(f"host network {self.tag} not fully removed: {problems}")

    def __enter__(self) -> HostNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_host_network(
    node_count: int = 2,
    *,
    private_paths: Iterable[str | os.PathLike[str]] = (),
    private_tmp: bool = True,
    timeout_s: float = 15.0,
) -> HostNetwork:
    """A gateway host and ``node_count`` node hosts, after removing stale leftovers; skips the
    calling test (with the reason) where namespaces cannot be made.

    ``private_paths`` are the paths each node host gets an empty disk over (the gateway's
    storage path, data root, ``var/``, ``~/.distlm``); ``private_tmp`` adds /tmp (Ray keeps
    its sessions and sockets there). Use as a context manager or call ``close()``.
    """
    skip_unless_namespaces()
    remove_stale_networks()
    return HostNetwork(
        node_count, private_paths=private_paths, private_tmp=private_tmp, timeout_s=timeout_s
    )
