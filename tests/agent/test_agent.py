"""The node agent (`distlm-node`) against a real gateway: the `make run` launcher with its
local Ray, as in test_quickstart. Registration and reuse, approval, bans, and a Ray worker
that joins the gateway's cluster with its node's resource and label and leaves on Ctrl-C."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.cli import build_parser, config_from_args, main
from agent.credentials import CredentialStore
from agent.errors import GatewayError, NodeBannedError
from agent.gateway_client import NodeIdentity, error_from_response, gateway_url
from agent.loop import AgentConfig, run_agent
from agent.machine import NodeResources, sample_metrics
from agent.ray_worker import RayWorker
from protocol.nodes import JoinInfo
from ray_module.cluster import ClusterConfig
from ray_module.head import HeadDirectory, start_head, stop_head
from ray_module.warm.launch import default_size
from ray_module.warm.pool import keeper_name
from tests.agent.gateway_process import (
    OWNER,
    OWNER_PASSWORD,
    PYTHON,
    Gateway,
    running_gateway,
    start_agent_process,
    unique_hostname,
)
from tests.polling import wait_for

# Far longer than any wait here: a node seen offline was not timed out, it left or its Ray
# worker died.
NODE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    with running_gateway(
        tmp, NODE_TIMEOUT=str(NODE_TIMEOUT_S), DISTLM_LOCAL_NODE="false"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def manual_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("manual-gateway")
    with running_gateway(
        tmp, DISTLM_NODE_AUTO_APPROVE="false", DISTLM_LOCAL_NODE="false"
    ) as running:
        yield running


def agent_args(gateway: Gateway, hostname: str, credential_file: Path, *extra: str) -> list[str]:
    return [
        "--coordinator-address",
        gateway.address,
        "--hostname",
        hostname,
        "--cpu",
        "--cpus",
        "2",
        "--memory-gb",
        "1.5",
        "--credential-file",
        str(credential_file),
        "--no-ray",
        "--heartbeat-interval",
        "0.1",
        *extra,
    ]


LOGIN = ["--username", OWNER, "--password", OWNER_PASSWORD]


# --- without a gateway -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("10.0.0.5:5000", "http://10.0.0.5:5000"),
        ("gateway.lan", "http://gateway.lan:8000"),
        ("https://distlm.example.org/", "https://distlm.example.org"),
        ("[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_coordinator_address_accepts_host_port_or_url(address: str, url: str) -> None:
    assert gateway_url(address) == url


def test_coordinator_address_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="http"):
        gateway_url("ftp://gateway")


def test_gateway_errors_carry_the_detail_and_bans_are_their_own_error() -> None:
    banned = error_from_response(
        httpx.Response(403, json={"error": "node_banned", "detail": "node 3 is banned"})
    )
    assert isinstance(banned, NodeBannedError) and banned.exit_code == 3
    assert str(banned) == "node 3 is banned (HTTP 403, node_banned)"
    proxy = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(proxy, GatewayError) and proxy.code == "http_502"


def test_cpu_flag_offers_no_gpus_and_gpu_flag_needs_one(tmp_path: Path) -> None:
    parser = build_parser()
    base = ["--coordinator-address", "h:1", "--credential-file", str(tmp_path / "c.json")]
    config = config_from_args(parser.parse_args([*base, "--cpu", "--cpus", "3"]), environ={})
    assert config.resources.gpu == 0 and config.resources.cpu_cores == 3
    assert config.resources.memory_gb > 0  # detected
    with pytest.raises(ValueError, match="--gpu"):
        config_from_args(parser.parse_args([*base, "--gpu", "--gpus", "0"]), environ={})
    with pytest.raises(ValueError, match="--cpu"):
        config_from_args(parser.parse_args([*base, "--cpu", "--gpus", "2"]), environ={})
    gpu = config_from_args(parser.parse_args([*base, "--gpu", "--gpus", "2"]), environ={})
    assert gpu.resources.gpu == 2
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--gpu", "--cpu"])


def test_warm_workers_default_to_one_per_core_at_most_four_and_can_be_turned_off(
    tmp_path: Path,
) -> None:
    parser = build_parser()
    base = ["--coordinator-address", "h:1", "--cpu", "--credential-file", str(tmp_path / "c")]
    assert config_from_args(parser.parse_args(base), environ={}).warm_workers is None
    off = config_from_args(parser.parse_args([*base, "--warm-workers", "0"]), environ={})
    assert off.warm_workers == 0
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--warm-workers", "-1"])
    assert [default_size(cpus) for cpus in (0, 1, 2, 8)] == [0, 1, 2, 4]


def test_secrets_come_from_the_environment_and_stay_out_of_repr(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--coordinator-address", "h:1", "--cpu", "--credential-file", str(tmp_path / "c")]
    )
    environ = {"DISTLM_NODE_USERNAME": "u1", "DISTLM_NODE_PASSWORD": "s3cret-pass"}
    config = config_from_args(args, environ=environ)
    assert (config.username, config.password) == ("u1", "s3cret-pass")
    assert "s3cret-pass" not in repr(config)
    assert "dln_x" not in repr(NodeIdentity(1, "h", "dln_x"))


def test_credential_file_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "dir" / "node.json")
    old_umask = os.umask(0)
    try:
        store.save(NodeIdentity(7, "box", "dln_secret"), gateway="http://g:1")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load() == NodeIdentity(7, "box", "dln_secret")


def test_ray_worker_command_carries_the_join_info(tmp_path: Path) -> None:
    join = JoinInfo(
        node_id=4,
        num_cpus=8,
        num_gpus=1,
        memory_gb=2.0,
        resources={"distlm_node_4": 1000},
        labels={"distlm-node-id": "4"},
        heartbeat_interval_s=10,
        ray_address="10.0.0.1:6379",
    )
    command = RayWorker(join, log_path=tmp_path / "ray.log", executable="ray").command()
    assert command[:2] == ["ray", "start"]
    for arg in (
        "--address=10.0.0.1:6379",
        "--num-cpus=8",
        "--num-gpus=1",
        f"--memory={2 * 1024**3}",
        '--resources={"distlm_node_4":1000}',
        "--labels=distlm-node-id=4",
        "--block",
    ):
        assert arg in command


def test_ray_worker_opts_into_token_auth_only_when_given_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    join = JoinInfo(4, 1, 0, 1.0, {}, {}, 10, ray_address="10.0.0.1:6379")
    # Said outright: unset, `ray start` would take up a token another Ray left in ~/.ray.
    plain = RayWorker(join, log_path=tmp_path / "ray.log").environment()
    assert plain["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the owner's own choice stands
    assert RayWorker(join, log_path=tmp_path / "r").environment()["RAY_AUTH_MODE"] == "token"
    monkeypatch.delenv("RAY_AUTH_MODE")
    token_file = tmp_path / "token"
    from_file = RayWorker(join, log_path=tmp_path / "r", auth_token_file=token_file)
    assert from_file.environment()["RAY_AUTH_TOKEN_PATH"] == str(token_file)
    given = JoinInfo(4, 1, 0, 1.0, {}, {}, 10, ray_address="10.0.0.1:6379", ray_auth_token="tok")
    env = RayWorker(given, log_path=tmp_path / "r", auth_token_file=token_file).environment()
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("token", "tok")
    assert "RAY_AUTH_TOKEN_PATH" not in env


def test_sample_metrics_reports_cpu_and_memory() -> None:
    sample = sample_metrics(gpus=0)
    assert 0 <= sample["cpu_percent"] <= 100
    assert sample["memory_used_gb"] > 0 and 0 < sample["memory_percent"] <= 100
    assert "gpu_utilization" not in sample


# --- against the gateway -----------------------------------------------------------------


@pytest.mark.ray
def test_agent_registers_heartbeats_and_a_restart_reuses_its_node(
    gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostname = unique_hostname()
    credential_file = tmp_path / "distlm" / "node.json"
    args = agent_args(gateway, hostname, credential_file)

    # Beats a little over a second apart: a node's heartbeats write a sample at most once a
    # second (faster ones only say it is alive).
    assert main([*args, *LOGIN, "--heartbeats", "2", "--heartbeat-interval", "1.05"]) == 0

    stored = json.loads(credential_file.read_text())
    assert stored["hostname"] == hostname and stored["credential"].startswith("dln_")
    assert stat.S_IMODE(credential_file.stat().st_mode) == 0o600
    node_id = stored["node_id"]
    node = gateway.as_owner("GET", f"/nodes/{node_id}")
    # --no-ray: heartbeats only, so the node is live but has not joined the cluster.
    assert (node["status"], node["approval"]) == ("not_joined", "approved")
    assert node["resources"] == {"gpu": 0, "cpu_cores": 2.0, "memory": 1.5}
    samples = gateway.as_owner("GET", f"/metrics/node/{node_id}")["samples"]
    assert len(samples) == 2
    for sample in samples:
        assert sample["cpu_percent"] is not None
        assert sample["memory_used_gb"] > 0 and sample["memory_percent"] > 0

    # A restart needs no login: the stored credential proves the node. (Its beat is stored
    # once a second has passed since the last sample.)
    last = dt.datetime.fromisoformat(samples[0]["received_at"].replace("Z", "+00:00"))
    wait_for(
        lambda: dt.datetime.now(dt.UTC) - last > dt.timedelta(seconds=1.05),
        timeout_s=5,
        what="a second since the last sample",
    )
    assert main([*args, "--once"]) == 0
    assert json.loads(credential_file.read_text())["node_id"] == node_id
    mine = gateway.as_owner("GET", "/nodes", params={"limit": 500})["items"]
    assert [n["id"] for n in mine if n["hostname"] == hostname] == [node_id]
    assert len(gateway.as_owner("GET", f"/metrics/node/{node_id}")["samples"]) == 3

    output = capsys.readouterr()
    assert f"node {node_id}" in output.err
    for secret in (OWNER_PASSWORD, stored["credential"]):
        assert secret not in output.out + output.err


@pytest.mark.ray
def test_agent_without_credential_file_reuses_the_hostname_with_the_owner_token(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostname = unique_hostname()
    registered = gateway.as_owner(
        "POST",
        "/nodes/register",
        json={"hostname": hostname, "resources": {"gpu": 0, "cpu_cores": 2, "memory": 1.5}},
    )
    monkeypatch.setenv("DISTLM_NODE_TOKEN", gateway.owner_token)
    credential_file = tmp_path / "node.json"

    assert main([*agent_args(gateway, hostname, credential_file), "--once"]) == 0

    stored = json.loads(credential_file.read_text())
    assert stored["node_id"] == registered["id"] and stored["credential"] is None
    metrics = gateway.as_owner("GET", f"/metrics/node/{registered['id']}")
    assert metrics["node"]["status"] == "not_joined" and len(metrics["samples"]) == 1


@pytest.mark.ray
def test_agent_waits_while_pending_and_goes_on_once_an_admin_approves(
    manual_gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hostname = unique_hostname()
    seen: dict[str, Any] = {}

    def approve_when_alive() -> None:
        # A pending agent heartbeats, so the admin sees a live node (not in Ray until it is
        # approved: not_joined) before approving it.
        def pending_and_online() -> dict[str, Any] | None:
            node = manual_gateway.node_named(hostname)
            return node if node and node["status"] == "not_joined" else None

        seen["pending"] = wait_for(pending_and_online, timeout_s=30, what="a pending, live node")
        first_beat = seen["pending"]["last_heartbeat_at"]
        # The agent keeps waiting meanwhile: it heartbeats again, still pending.
        wait_for(
            lambda: (node := pending_and_online()) and node["last_heartbeat_at"] != first_beat,
            timeout_s=30,
            what="the pending agent to heartbeat again while it waits",
        )
        manual_gateway.as_admin("POST", f"/nodes/{seen['pending']['id']}/approve")

    config = AgentConfig(
        gateway_url=manual_gateway.base,
        hostname=hostname,
        resources=NodeResources(gpu=0, cpu_cores=1, memory_gb=1.0),
        credential_file=tmp_path / "node.json",
        username=OWNER,
        password=OWNER_PASSWORD,
        start_ray=False,
        approval_timeout_s=40,
        approval_poll_s=0.1,
        heartbeat_interval_s=0.1,
        max_heartbeats=1,
    )
    with ThreadPoolExecutor(1) as pool, caplog.at_level(logging.INFO, logger="distlm.agent"):
        approving = pool.submit(approve_when_alive)
        try:
            result = run_agent(config)
        finally:
            approving.result(timeout=90)  # what the approver raised, raised here

    assert seen["pending"]["approval"] == "pending"
    assert result.node_id == seen["pending"]["id"]
    assert (result.how, result.heartbeats) == ("registered", 1)
    assert "waiting for an admin's approval" in caplog.text
    assert manual_gateway.as_owner("GET", f"/nodes/{result.node_id}")["approval"] == "approved"


@pytest.mark.ray
def test_agent_gives_up_when_not_approved_in_time(
    manual_gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = agent_args(manual_gateway, unique_hostname(), tmp_path / "node.json", *LOGIN)
    started = time.monotonic()
    assert main([*args, "--approval-timeout", "0.5", "--approval-poll", "0.1"]) == 4
    assert time.monotonic() - started < 10
    assert "was not approved within 0.5 s" in capsys.readouterr().err


@pytest.mark.ray
def test_a_banned_node_stops_the_agent_with_an_error(
    gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostname = unique_hostname()
    args = agent_args(gateway, hostname, tmp_path / "node.json", *LOGIN)

    def ban_when_online() -> None:
        node = wait_for(
            lambda: (n := gateway.node_named(hostname)) and n["status"] == "not_joined" and n,
            timeout_s=30,
            what="the agent's node to be live (--no-ray: not joined)",
        )
        gateway.as_admin("POST", f"/nodes/{node['id']}/ban")

    banner = threading.Thread(target=ban_when_online, daemon=True)
    banner.start()
    # Bounded: 300 heartbeats at 0.1 s if the ban never came.
    assert main([*args, "--heartbeats", "300"]) == 3
    banner.join(timeout=5)
    assert "is banned" in capsys.readouterr().err

    # A banned node does not start again either.
    assert main([*args, "--once"]) == 3


# --- in a trusted pool -------------------------------------------------------------------

# Runs as a driver of the pool (a driver on a machine with several Ray nodes attaches to the
# head, not to the agent's node): reports the agent's node once it is alive, then whether it
# is gone.
RAY_PROBE = """
import json, sys, time
import ray

address, resource, keeper_name = sys.argv[1], sys.argv[2], sys.argv[3]
ray.init(address=address, logging_level="ERROR", log_to_driver=False)

def live():
    return [n for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]

def keeper_state(timeout_s):
    try:
        keeper = ray.get_actor(keeper_name, namespace="distlm")
        return ray.get(keeper.state.remote(), timeout=timeout_s)
    except (ValueError, ray.exceptions.RayError):
        return None

deadline = time.monotonic() + 60
while not live() and time.monotonic() < deadline:
    time.sleep(0.2)
nodes = [{"resources": n["Resources"], "labels": n.get("Labels", {})} for n in live()]
print(json.dumps({"joined": nodes}), flush=True)
if nodes:
    deadline = time.monotonic() + 120
    state = keeper_state(5)
    while (not state or state["ready"] < state["size"]) and time.monotonic() < deadline:
        time.sleep(0.5)
        state = keeper_state(5)
    print(json.dumps({"warm": state}), flush=True)
    deadline = time.monotonic() + 60
    while live() and time.monotonic() < deadline:
        time.sleep(0.2)
    print(json.dumps({"gone": not live(), "keeper": keeper_state(10)}), flush=True)
"""


@pytest.fixture
def pool(tmp_path: Path, gateway: Gateway) -> Iterator[tuple[str, Path]]:
    """An operator's own Ray cluster with token authentication (its head only, no CPUs):
    its address and the token's file."""
    token_file = tmp_path / "pool.token"
    token_file.write_text("pool-token-" + os.urandom(8).hex())
    config = ClusterConfig(num_cpus=0, object_store_mb=80, auth_token=token_file.read_text())
    head = start_head(config, HeadDirectory(Path(gateway.ray_tmpdir) / "pool"), host="127.0.0.1")
    yield head.address, token_file
    stop_head(head)


@pytest.mark.ray
@pytest.mark.slow
def test_an_agent_joins_a_trusted_pool_with_its_node_resource_and_leaves_on_ctrl_c(
    gateway: Gateway, pool: tuple[str, Path], tmp_path: Path
) -> None:
    address, token_file = pool
    credential_file = tmp_path / "node.json"
    agent, agent_log = start_agent_process(
        gateway,
        tmp_path,
        unique_hostname(),
        *("--ray-address", address, "--ray-auth-token-file", str(token_file)),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_TMPDIR"] = gateway.ray_tmpdir
    probe: subprocess.Popen | None = None
    try:

        def worker_started() -> bool:
            assert agent.poll() is None, f"agent exited:\n{agent_log.read_text()}"
            return "Ray worker (pid" in agent_log.read_text()

        wait_for(worker_started, timeout_s=60, what="the agent to join the pool")
        node_id = json.loads(credential_file.read_text())["node_id"]
        resource = f"distlm_node_{node_id}"

        # The pool takes its own token (the agent read it from the file), no other.
        probe_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token_file.read_text()}
        with open(tmp_path / "probe.err", "wb") as probe_err:
            probe = subprocess.Popen(
                [PYTHON, "-c", RAY_PROBE, address, resource, keeper_name(node_id)],
                env=probe_env,
                stdout=subprocess.PIPE,
                stderr=probe_err,
                text=True,
            )
        assert probe.stdout is not None
        joined = json.loads(probe.stdout.readline() or "{}").get("joined")  # probe-bounded
        probe_log = (tmp_path / "probe.err").read_text()
        assert joined, f"no live Ray node offers {resource}:\n{agent_log.read_text()}{probe_log}"
        (ray_node,) = joined
        assert ray_node["resources"][resource] == 1000
        assert ray_node["resources"]["CPU"] == 1
        assert ray_node["labels"]["distlm-node-id"] == str(node_id)
        # Its warm worker (one per core) on the pool, ready for the jobs its agent drives.
        warm = json.loads(probe.stdout.readline() or "{}").get("warm")  # probe-bounded
        assert warm == {"size": 1, "idle": 1, "ready": 1, "taken": 0}, agent_log.read_text()
        # Online (schedulable) once it asks for its runs, in the pool it named.
        wait_for(
            lambda: gateway.as_owner("GET", f"/nodes/{node_id}")["status"] == "online",
            timeout_s=30,
            what="the node to be online",
        )

        agent.send_signal(signal.SIGINT)  # Ctrl-C
        # The agent says goodbye: offline at once, not after NODE_TIMEOUT. The bound is
        # generous for busy machines and still a tenth of the node timeout, which therefore
        # cannot be what made it offline.
        wait_for(
            lambda: gateway.as_owner("GET", f"/nodes/{node_id}")["status"] == "offline",
            timeout_s=NODE_TIMEOUT_S / 10,
            every_s=0.1,
            what="the node to be offline after Ctrl-C",
        )
        assert agent.wait(timeout=60) == 0, agent_log.read_text()
        assert f"told the gateway node {node_id} is leaving" in agent_log.read_text()
        last = json.loads(probe.stdout.readline() or "{}")
        assert last.get("gone"), f"the agent's Ray node is still alive:\n{agent_log.read_text()}"
        assert last["keeper"] is None  # its keeper and warm worker went with it
        assert probe.wait(timeout=30) == 0
        assert "Ray worker stopped" in agent_log.read_text()
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()
            probe.wait(timeout=10)
        if agent.poll() is None:
            agent.kill()  # its Ray worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
            agent.wait(timeout=10)


def test_the_node_address_is_found_on_the_route_to_the_gateway() -> None:
    """No default route needed: the address towards the gateway's host (the host tests run
    agents on hosts without one, and their multi-node jobs rely on it)."""
    from agent.machine import address_towards

    assert address_towards("http://127.0.0.1:8000") == "127.0.0.1"
    assert address_towards("http://localhost:8000") == "127.0.0.1"
