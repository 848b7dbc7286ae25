"""The host harness makes separate machines: reachable only from each other, with no way out,
no shared disk where the test says so, links that can be cut and restored, nothing left after."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts import network as network_module
from tests.hosts.network import (
    NETNS_ETC,
    SUBNET_PREFIX,
    Host,
    HostNetwork,
    code_under,
    pid_alive,
    remove_stale_networks,
    skip_unless_namespaces,
    start_host_network,
)
from tests.paths import BACKEND, REPO_ROOT
from tests.polling import wait_for

PORT = 8000  # each host has its own port space
FETCH = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as response:
    print(response.read().decode())
"""
CONNECT_OUTSIDE = """
import errno, socket, time
started = time.monotonic()
try:
    socket.create_connection(("192.0.2.1", 9), timeout=5)
    print("connected")
except OSError as error:
    print(errno.errorcode.get(error.errno, error.errno), round(time.monotonic() - started, 3))
"""


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hosts")


@pytest.fixture(scope="module")
def network(shared_root: Path) -> Iterator[HostNetwork]:
    # /tmp stays shared here so that the private paths alone are what keeps storage apart
    storage, home_distlm = shared_root / "storage", shared_root / "home" / ".distlm"
    storage.mkdir()
    (storage / "from-gateway.txt").write_text("gateway's")
    with start_host_network(2, private_paths=[storage, home_distlm], private_tmp=False) as net:
        yield net


@pytest.fixture(scope="module")
def web_server(network: HostNetwork, shared_root: Path) -> Iterator[str]:
    served = shared_root / "served"
    served.mkdir()
    (served / "hello.txt").write_text("hello from the gateway host")
    gateway = network.gateway
    server = gateway.popen(
        [sys.executable, "-m", "http.server", "--bind", gateway.address, str(PORT)],
        cwd=served,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{gateway.address}:{PORT}/hello.txt"
    wait_for(
        lambda: fetch(gateway, url).returncode == 0 or server.poll() is not None,
        timeout_s=10,
        what="the gateway host's HTTP server",
    )
    assert server.poll() is None
    yield url


def fetch(host: Host, url: str, timeout_s: float = 2.0) -> subprocess.CompletedProcess[str]:
    return host.run([sys.executable, "-c", FETCH, url, str(timeout_s)], timeout_s=timeout_s + 5)


def test_hosts_have_their_own_addresses_names_and_no_way_out(network: HostNetwork) -> None:
    addresses = [host.address for host in network.hosts]
    assert len(set(addresses)) == 3 and all(a.startswith(SUBNET_PREFIX) for a in addresses)
    node = network.nodes[0]
    assert node.run(["hostname"], timeout_s=5, check=True).stdout.strip() == "node1"
    resolved = node.run(
        [sys.executable, "-c", "import socket; print(socket.gethostbyname('gateway'))"],
        timeout_s=5,
        check=True,
    )
    assert resolved.stdout.strip() == network.gateway.address
    for host in network.hosts:
        routes = host.run(["ip", "route"], timeout_s=5, check=True).stdout
        routes6 = host.run(["ip", "-6", "route"], timeout_s=5, check=True).stdout
        assert "default" not in routes and "default" not in routes6, (host.name, routes)
        assert routes.split()[:1] == [f"{SUBNET_PREFIX}0/24"], routes
    outside = node.run([sys.executable, "-c", CONNECT_OUTSIDE], timeout_s=10, check=True)
    reason, seconds = outside.stdout.split()
    assert reason == "ENETUNREACH" and float(seconds) < 0.5, outside.stdout
    # the bridge in the root namespace has no address: the root namespace is not a host
    bridge = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", network.bridge], capture_output=True, text=True
    )
    assert bridge.returncode == 0 and bridge.stdout.strip() == ""


def test_a_server_on_the_gateway_host_answers_both_node_hosts(
    network: HostNetwork, web_server: str
) -> None:
    for node in network.nodes:
        answer = fetch(node, web_server)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == "hello from the gateway host"


def test_node_hosts_share_no_disk_under_private_paths(
    network: HostNetwork, shared_root: Path
) -> None:
    storage = shared_root / "storage"
    node1, node2 = network.nodes
    assert node1.run(["ls", "-A", storage], timeout_s=5, check=True).stdout == ""
    node1.run(["sh", "-c", f"echo node1 > {storage}/from-node1.txt"], timeout_s=5, check=True)
    distlm = shared_root / "home" / ".distlm"
    node1.run(["sh", "-c", f"cat > {distlm}/node.key"], timeout_s=5, input="key", check=True)
    # one disk per host: the next process on node 1 sees it, and so does the test through path()
    assert node1.run(["cat", storage / "from-node1.txt"], timeout_s=5).stdout == "node1\n"
    assert node1.path(storage / "from-node1.txt").read_text() == "node1\n"
    # ...but neither the gateway host, nor the test's own view, nor node 2 does
    assert sorted(os.listdir(storage)) == ["from-gateway.txt"]
    assert not (distlm / "node.key").exists()
    gateway_view = network.gateway.run(["ls", "-A", storage], timeout_s=5, check=True)
    assert gateway_view.stdout.split() == ["from-gateway.txt"]
    assert node2.run(["ls", "-A", storage], timeout_s=5, check=True).stdout == ""
    # what is not named stays shared, like the code and the virtualenv
    (shared_root / "shared.txt").write_text("seen by all")
    assert node2.run(["cat", shared_root / "shared.txt"], timeout_s=5).stdout == "seen by all"
    assert node2.run([sys.executable, "-c", "import tests.polling"], timeout_s=10).returncode == 0


def test_a_cut_link_isolates_one_node_until_it_returns(
    network: HostNetwork, web_server: str
) -> None:
    node1, node2 = network.nodes
    node1.link_down()
    try:
        assert not node1.link_is_up()
        started = time.monotonic()
        cut_off = fetch(node1, web_server, timeout_s=1.0)
        assert cut_off.returncode != 0 and time.monotonic() - started < 5
        assert fetch(node2, web_server).returncode == 0
    finally:
        node1.link_up()
    wait_for(
        lambda: fetch(node1, web_server, timeout_s=1.0).returncode == 0,
        timeout_s=10,
        what="node 1 reaching the gateway host again",
    )


def test_node_hosts_get_a_private_tmp_and_closing_removes_everything(tmp_path: Path) -> None:
    (tmp_path / "gateway.txt").write_text("gateway's")
    network = start_host_network(1)
    node = network.nodes[0]
    sleeper = node.popen(["sleep", "600"])  # closing kills what hosts started
    daemon = node.popen(["sh", "-c", "setsid sleep 600 & echo $!"], stdout=subprocess.PIPE)
    assert daemon.stdout is not None
    escaped = int(daemon.stdout.readline())  # left its process group: found by namespace
    daemon.wait(timeout=5)
    try:
        # Empty, but for the code when it lies under /tmp (a clone there): bound back.
        code = [path.relative_to("/tmp").parts[0] for path in code_under([Path("/tmp")])]
        listed = node.run(["ls", "-A", "/tmp"], timeout_s=5, check=True).stdout.split()
        assert listed == code
        assert all(
            node.run(["test", "-d", path], timeout_s=5).returncode == 0
            for path in code_under([Path("/tmp")])
        )
        assert node.run(["test", "-e", tmp_path / "gateway.txt"], timeout_s=5).returncode == 1
        node.run(["touch", "/tmp/from-node"], timeout_s=5, check=True)
        assert not Path("/tmp/from-node").exists()
        assert network.gateway.run(["test", "-e", "/tmp/from-node"], timeout_s=5).returncode == 1
    finally:
        names = network.namespace_names() + network.link_names()
        network.close()
    assert sleeper.returncode is not None
    assert not pid_alive(escaped)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert [name for name in names if name in namespaces or name in links] == []
    assert not any((NETNS_ETC / name).exists() for name in network.namespace_names())
    network.close()  # idempotent


def test_leftovers_of_a_dead_run_are_removed_and_a_live_ones_kept() -> None:
    skip_unless_namespaces()
    dead = subprocess.Popen(["true"])
    dead.wait()
    dead_tag, live_tag = f"dlh{dead.pid:x}-00", "dlh1-00"  # pid 1 is alive
    for tag in (dead_tag, live_tag):
        subprocess.run(["ip", "netns", "add", f"{tag}-node1"], check=True)
        subprocess.run(["ip", "link", "add", f"{tag}br", "type", "bridge"], check=True)
        veth = ["ip", "link", "add", f"{tag}v1", "type", "veth", "peer", "name", "eth0"]
        subprocess.run([*veth, "netns", f"{tag}-node1"], check=True)
    try:
        remove_stale_networks()
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
        assert dead_tag not in namespaces.stdout + links.stdout
        assert f"{live_tag}-node1" in namespaces.stdout
        assert f"{live_tag}br" in links.stdout and f"{live_tag}v1" in links.stdout
    finally:
        for tag in (dead_tag, live_tag):
            subprocess.run(["ip", "link", "del", f"{tag}v1"], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{tag}br"], capture_output=True)
            subprocess.run(["ip", "netns", "del", f"{tag}-node1"], capture_output=True)


def test_no_namespaces_means_a_skip_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network_module, "namespaces_unavailable", lambda: "not running as root")
    with pytest.raises(pytest.skip.Exception, match="unavailable: not running as root"):
        start_host_network(2)


def test_the_probe_names_why_namespaces_cannot_be_made() -> None:
    # root of a user namespace of its own: uid 0 without the rights to make network namespaces
    probe = "from tests.hosts.network import namespaces_unavailable as n; print(n())"
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(BACKEND)])},
        cwd=REPO_ROOT,
    )
    if result.returncode != 0 and "unshare" in result.stderr:
        pytest.skip(f"user namespaces unavailable: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert "Operation not permitted" in result.stdout, result.stdout


def test_a_private_path_may_not_hide_the_code() -> None:
    with pytest.raises(ValueError, match="would hide"):
        HostNetwork(1, private_paths=[REPO_ROOT.parent])
