"""The agent's run, free of argparse so tests can call it: register or reuse the node,
wait for approval, start its Ray (its own, or its member of a trusted pool) and follow its
runs, and send heartbeats until told to stop."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from agent.credentials import CredentialStore
from agent.errors import GatewayError, GatewayUnreachableError
from agent.gateway_client import GatewayClient, NodeIdentity
from agent.machine import NodeResources, address_towards, sample_metrics
from agent.own_ray import OwnRay
from agent.ray_worker import WorkerSupervisor
from agent.registration import register_or_reuse, wait_for_approval
from agent.runs import RayPool, RunFollower
from protocol.nodes import JoinInfo

log = logging.getLogger("distlm.agent")


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
    warm_workers: int | None = None  # None: ray_module.warm's default for the node's CPUs
    ray_address: str = ""  # a trusted pool to join instead of a Ray of the node's own
    ray_auth_token_file: Path | None = None  # the pool's Ray token, if it uses one
    ray_log_file: Path | None = None  # None: next to the credential file
    max_worker_restarts: int = 5
    # Where jobs run on the node's own Ray: its files (None: next to the credential file)
    # and the address its Ray serves at (multi-node jobs need one other nodes reach).
    work_dir: Path | None = None
    node_address: str | None = None  # None: this machine's address towards the gateway
    data_root: str = ""  # the node's local datasets, for jobs that name one
    single_node_only: bool = False  # never share a Ray cluster with another machine


@dataclass(frozen=True)
class AgentResult:
    node_id: int
    how: str
    heartbeats: int


def _new_credential(
    client: GatewayClient, store: CredentialStore, identity: NodeIdentity
) -> NodeIdentity:
    """The node's credential was reset (by its owner or an admin): with the owner's login,
    fetch a fresh one and keep it, as the README's Administration section says."""
    fresh = NodeIdentity(
        identity.node_id, identity.hostname, client.new_credential(identity.node_id)
    )
    store.save(fresh, gateway=client.base_url)
    log.warning(
        "node %s's credential was reset; fetched a new one into %s", fresh.node_id, store.path
    )
    return fresh


def _heartbeat_loop(
    client: GatewayClient,
    identity: NodeIdentity,
    config: AgentConfig,
    *,
    stop: threading.Event,
    interval_s: float,
    supervisor: WorkerSupervisor | None,
    store: CredentialStore,
) -> int:
    sent = 0
    while not stop.is_set():
        if supervisor is not None:
            supervisor.check()
        sample = sample_metrics(config.resources.gpu)
        try:
            answer = client.heartbeat(identity, sample)
        except (GatewayUnreachableError, GatewayError) as exc:
            reset = isinstance(exc, GatewayError) and exc.code == "bad_node_credential"
            if reset and identity.credential and client.can_log_in:
                identity = _new_credential(client, store, identity)
                if supervisor is not None:
                    supervisor.identity = identity
                continue
            # Outages and server errors heal; a refusal (banned, bad credential) does not.
            if isinstance(exc, GatewayError) and exc.status < 500 and exc.status != 429:
                raise
            log.warning("heartbeat failed, retrying in %g s: %s", interval_s, exc)
        else:
            sent += 1
            log.debug("heartbeat %s: %s", sent, sample)
            if config.heartbeat_interval_s is None:
                interval_s = float(answer.get("next_heartbeat_in_s") or interval_s)
            if supervisor is not None:
                offered = answer.get("resources") or {}
                if offered:
                    supervisor.follow_resources(
                        float(offered.get("cpu_cores", 1)), int(offered.get("gpu", 0))
                    )
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


def _say_goodbye(client: GatewayClient, identity: NodeIdentity) -> None:
    """Asked to stop (Ctrl-C): the node shows offline at once instead of after the
    gateway's NODE_TIMEOUT. Best effort: a gateway that is down learns it from the timeout."""
    try:
        client.leave(identity)
        log.info("told the gateway node %s is leaving", identity.node_id)
    except (GatewayUnreachableError, GatewayError) as exc:
        log.warning("could not tell the gateway node %s is leaving: %s", identity.node_id, exc)


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


def offers_of(config: AgentConfig) -> dict[str, float]:
    """What this machine offers, as detected or declared on the command line."""
    return {"cpu_cores": config.resources.cpu_cores, "gpu": config.resources.gpu}


def _start_own_ray(
    client: GatewayClient,
    identity: NodeIdentity,
    config: AgentConfig,
    join: JoinInfo,
) -> tuple[OwnRay, RunFollower]:
    """Jobs run on this node's own Ray: start it, then follow the gateway's list of this
    node's runs in a thread of its own (a job starts within a second of being placed)."""
    work_dir = config.work_dir or config.credential_file.with_name(
        config.credential_file.stem + "-work"
    )
    node_address = config.node_address or address_towards(client.base_url)
    own_ray = OwnRay(
        join,
        work_dir / "ray",
        host=node_address,
        object_store_mb=config.object_store_mb,
        warm_workers=config.warm_workers,
    )
    address = own_ray.start()
    follower = RunFollower(
        client,
        identity,
        ray_address=address,
        work_dir=work_dir,
        node_address=node_address,
        data_root=config.data_root,
        object_store_mb=config.object_store_mb,
        single_node_only=config.single_node_only,
        warm_ray=own_ray,
        offers=offers_of(config),
    )
    follower.start()
    return own_ray, follower


def _join_pool(
    client: GatewayClient,
    identity: NodeIdentity,
    config: AgentConfig,
    join: JoinInfo,
) -> tuple[WorkerSupervisor, RunFollower]:
    """Jobs run on a trusted pool (``--ray-address``): this node joins it with its own
    resource, kept up by the supervisor, and follows its runs there."""
    work_dir = config.work_dir or config.credential_file.with_name(
        config.credential_file.stem + "-work"
    )
    node_address = config.node_address or address_towards(f"ray://{config.ray_address}")
    supervisor = WorkerSupervisor(
        client,
        identity,
        log_path=config.ray_log_file or config.credential_file.with_suffix(".ray.log"),
        object_store_mb=config.object_store_mb,
        auth_token_file=config.ray_auth_token_file,
        max_restarts=config.max_worker_restarts,
        pool_address=config.ray_address,
        node_address=node_address,
        warm_workers=config.warm_workers,
    )
    supervisor.start(join)
    token_file = config.ray_auth_token_file
    follower = RunFollower(
        client,
        identity,
        ray_address=config.ray_address,
        work_dir=work_dir,
        node_address=node_address,
        data_root=config.data_root,
        single_node_only=config.single_node_only,
        pool=RayPool(
            token=token_file.read_text().strip() if token_file else "",
            ready=supervisor.running,
        ),
        offers=offers_of(config),
    )
    follower.start()
    return supervisor, follower


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
    own_ray: OwnRay | None = None
    follower: RunFollower | None = None
    store = CredentialStore(config.credential_file)
    identity: NodeIdentity | None = None
    try:
        registration = register_or_reuse(
            client,
            store,
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

        join = wait_for_approval(
            client,
            identity,
            stop=stop,
            timeout_s=config.approval_timeout_s,
            poll_s=config.approval_poll_s,
            while_pending=beat_while_pending,
        )
        if stop.is_set():
            return AgentResult(identity.node_id, registration.how, 0)
        _warn_if_resources_differ(join, config.resources)
        if config.start_ray and config.ray_address:
            supervisor, follower = _join_pool(client, identity, config, join)
        elif config.start_ray:
            own_ray, follower = _start_own_ray(client, identity, config, join)
        interval_s = config.heartbeat_interval_s or join.heartbeat_interval_s
        sent = _heartbeat_loop(
            client,
            identity,
            config,
            stop=stop,
            interval_s=interval_s,
            supervisor=supervisor,
            store=store,
        )
        return AgentResult(identity.node_id, registration.how, sent)
    finally:
        if stop.is_set() and identity is not None:
            _say_goodbye(client, supervisor.identity if supervisor else identity)
        if supervisor is not None:
            supervisor.stop()
        if follower is not None:
            follower.stop()
        if own_ray is not None:
            own_ray.stop()
        if own_client:
            client.close()
