"""The node registry: registration with a one-time credential, approval, heartbeats, status."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from auth.models import Role, User
from compute.billing.pending_credit import void_node_credit
from compute.models import Node, NodeHeartbeat
from compute.nodes.spec import HeartbeatSample, NodeRegistration
from compute.visibility import owned_or_missing, page, visible_to
from core.db import utcnow
from core.errors import ConflictError, NotFoundError, PermissionDeniedError
from protocol.nodes import NODE_LABEL, JoinInfo
from protocol.nodes import node_resource as node_resource_name

CREDENTIAL_PREFIX = "dln_"


class NodeStatus(enum.StrEnum):
    REGISTERED = "registered"  # no heartbeat yet
    ONLINE = "online"  # heartbeats arrive and its Ray worker is in the cluster: it gets work
    NOT_JOINED = "not_joined"  # heartbeats arrive, but no Ray worker joined: it gets no work
    OFFLINE = "offline"
    DEREGISTERED = "deregistered"  # retired by its owner; its history stays


class NodeApproval(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    BANNED = "banned"


def node_status(node: Node, *, now: dt.datetime, timeout_s: int) -> NodeStatus:
    """Derived from the last heartbeat (and Ray's word that the node's worker died), so it
    can never disagree with them."""
    if node.deregistered_at is not None:
        return NodeStatus.DEREGISTERED
    if node.ray_alive is False or has_left(node):
        return NodeStatus.OFFLINE
    if node.last_heartbeat_at is None:
        return NodeStatus.REGISTERED
    if now - node.last_heartbeat_at > dt.timedelta(seconds=timeout_s):
        return NodeStatus.OFFLINE
    if not node.ray_alive:  # a heartbeat alone (curl, an agent still joining) runs nothing
        return NodeStatus.NOT_JOINED
    return NodeStatus.ONLINE


def has_left(node: Node) -> bool:
    """Its agent said goodbye, and no heartbeat came since."""
    return node.left_at is not None and (
        node.last_heartbeat_at is None or node.last_heartbeat_at <= node.left_at
    )


def hash_credential(credential: str) -> str:
    # The credential is 256 random bits, so a fast hash is enough (no brute force possible).
    return hashlib.sha256(credential.encode()).hexdigest()


def register_node(
    session: Session, owner: User, registration: NodeRegistration, *, auto_approve: bool
) -> tuple[Node, str]:
    """Store the node; return it with its credential, which is shown this once only."""
    taken = session.scalar(
        select(Node.id).where(Node.owner_id == owner.id, Node.hostname == registration.hostname)
    )
    if taken is not None:
        raise ConflictError(
            f"you already registered a node named '{registration.hostname}' (id {taken})",
            code="node_exists",
        )
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    resources = registration.resources
    node = Node(
        owner_id=owner.id,
        hostname=registration.hostname,
        gpu=resources.gpu,
        cpu_cores=resources.cpu_cores,
        memory_gb=resources.memory,
        approval=(NodeApproval.APPROVED if auto_approve else NodeApproval.PENDING).value,
        credential_hash=hash_credential(credential),
    )
    session.add(node)
    session.flush()
    return node, credential


def list_nodes(
    session: Session, viewer: User, *, limit: int, offset: int
) -> tuple[list[Node], int]:
    return page(session, visible_to(Node, viewer), order_by=Node.id, limit=limit, offset=offset)


def get_node_for(session: Session, viewer: User, node_id: int) -> Node:
    """The node if the viewer owns it or is an admin; otherwise 'not found' (no leak)."""
    node = owned_or_missing(session.get(Node, node_id), viewer)
    if node is None:
        raise NotFoundError(f"node {node_id} not found")
    return node


def node_for_credential(session: Session, node_id: int, credential: str) -> Node:
    node = session.get(Node, node_id)
    if node is None or not hmac.compare_digest(node.credential_hash, hash_credential(credential)):
        # Same answer for unknown node and wrong credential.
        raise PermissionDeniedError(
            f"this node credential does not belong to node {node_id}", code="bad_node_credential"
        )
    if why := owner_cannot_lend(session.get(User, node.owner_id)):
        raise PermissionDeniedError(f"node {node_id}'s {why}", code="owner_cannot_lend")
    return node


def owner_cannot_lend(owner: User | None) -> str:
    """Why a node's owner may not lend it now ('' when they may): an account disabled or
    no longer a node owner cuts off all of its nodes at once."""
    if owner is None or not owner.is_active:
        return "owner's account is disabled"
    if owner.role not in (Role.NODE_OWNER, Role.ADMIN):
        return "owner is no longer a node owner"
    return ""


def node_for_heartbeat(
    session: Session, node_id: int, *, node: Node | None, user: User | None
) -> Node:
    """The node a heartbeat is for: proven by its credential, or by its owner's token."""
    if node is not None:
        return node
    assert user is not None
    if user.role == Role.USER:
        raise PermissionDeniedError("this action needs the role: node_owner, admin")
    target = session.get(Node, node_id)
    if target is None or target.owner_id != user.id:
        if user.role == Role.ADMIN and target is not None:
            raise PermissionDeniedError("only the node itself or its owner may send heartbeats")
        raise NotFoundError(f"node {node_id} not found")
    return target


def refuse_retired(node: Node) -> None:
    if node.deregistered_at is not None:
        raise ConflictError(
            f"node {node.id} was deregistered; register the machine again to lend it",
            code="node_deregistered",
        )


# A node beating faster than this writes nothing more: its liveness and last sample are
# already fresh (a flood of heartbeats was a write each, and slowed everyone down).
HEARTBEAT_MIN_GAP = dt.timedelta(seconds=1)
HEARTBEAT_RETENTION = dt.timedelta(hours=24)  # samples older than this are pruned


def record_heartbeat(session: Session, node: Node, sample: HeartbeatSample) -> dt.datetime:
    """Note the node alive now, with its sample, at most once per HEARTBEAT_MIN_GAP (and at
    once after it said it left); when it was received."""
    if node.approval == NodeApproval.BANNED:
        raise PermissionDeniedError(
            f"node {node.id} is banned; its heartbeats are refused", code="node_banned"
        )
    refuse_retired(node)
    now = utcnow()
    last = node.last_heartbeat_at
    back_from_leaving = node.left_at is not None and (last is None or node.left_at >= last)
    if last is not None and now - last < HEARTBEAT_MIN_GAP and not back_from_leaving:
        return now
    node.last_heartbeat_at = now
    session.add(NodeHeartbeat(node_id=node.id, received_at=now, **sample.model_dump()))
    session.flush()
    return now


def prune_heartbeats(session: Session, *, now: dt.datetime | None = None) -> int:
    """Delete samples older than HEARTBEAT_RETENTION; how many went."""
    cutoff = (now or utcnow()) - HEARTBEAT_RETENTION
    gone = session.execute(
        delete(NodeHeartbeat)
        .where(NodeHeartbeat.received_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return int(gone.rowcount or 0)


RAY_RESOURCE_UNITS = 1000  # of the node's custom resource; a bundle asks for one unit


def join_info(node: Node, *, heartbeat_interval_s: float) -> JoinInfo:
    """What a node's agent starts its Ray with: given only to approved nodes (the gateway
    has no cluster of its own to name, so ``ray_address`` stays empty)."""
    ready_to_run(node)
    return JoinInfo(
        node_id=node.id,
        num_cpus=max(1, int(node.cpu_cores)),
        num_gpus=node.gpu,
        memory_gb=node.memory_gb,
        resources={node_resource_name(node.id): RAY_RESOURCE_UNITS},
        labels={NODE_LABEL: str(node.id)},
        heartbeat_interval_s=heartbeat_interval_s,
    )


def ready_to_run(node: Node) -> None:
    """Only an approved node, neither banned nor retired, is told what to run."""
    if node.approval == NodeApproval.BANNED:
        raise PermissionDeniedError(f"node {node.id} is banned", code="node_banned")
    refuse_retired(node)
    if node.approval != NodeApproval.APPROVED:
        raise ConflictError(
            f"node {node.id} is waiting for an admin's approval", code="node_not_approved"
        )


def set_node_approval(session: Session, node_id: int, approval: NodeApproval) -> Node:
    node = session.get(Node, node_id)
    if node is None:
        raise NotFoundError(f"node {node_id} not found")
    if approval == NodeApproval.BANNED and node.approval != NodeApproval.BANNED:
        node.banned_at = utcnow()  # its attempts are lost (node_shut_out), resumed elsewhere
        # Work not yet paid out is not paid for: every payer gets it back.
        void_node_credit(session, node.id, "the node was banned by an admin")
    if approval == NodeApproval.APPROVED and node.suspended_reason:
        # Approved again after a suspension: on probation, checked at every checkpoint.
        node.suspended_reason, node.invalid_streak, node.valid_streak = "", 0, 0
    node.approval = approval.value
    session.flush()
    return node
