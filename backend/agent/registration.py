"""Which node this machine is (the stored one, a new registration, or the owner's node of
the same hostname) and the wait for an admin's approval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.credentials import CredentialStore
from agent.errors import (
    AgentError,
    ApprovalTimeoutError,
    GatewayError,
    GatewayUnreachableError,
    NodeBannedError,
)
from agent.gateway_client import GatewayClient, NodeIdentity
from agent.machine import NodeResources
from protocol.nodes import JoinInfo

log = logging.getLogger("distlm.agent")


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
            if exc.code == "cluster_restarting":  # new credentials in a few seconds
                stop.wait(1.0)
                continue
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
