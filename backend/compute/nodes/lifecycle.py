"""Nodes over their life, as owners and admins manage them: change what a node offers,
give it a new credential, drain it, retire it, unban it; and the agent's goodbye."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.models import User
from compute.dispatch.scheduling import slots_of
from compute.jobs.state import ACTIVE, JobStatus
from compute.models import Job, Node
from compute.nodes.service import CREDENTIAL_PREFIX, NodeApproval, get_node_for, hash_credential
from compute.nodes.spec import NodeResources
from core.db import utcnow
from core.errors import ConflictError, NotFoundError

PICK_UP_NEW_CREDENTIAL = (
    "the old credential stops working now. A running agent logged in as the owner fetches a "
    "new one itself when its heartbeat is refused; otherwise put this one in the agent's "
    "credential file (~/.distlm/node-<hostname>.json, key 'credential') and restart it"
)


def _live(session: Session, viewer: User, node_id: int, *, banned_ok: bool = False) -> Node:
    """A node the viewer may manage. A retired node takes no action; a banned one none but
    its retirement (an admin unbans it first)."""
    node = get_node_for(session, viewer, node_id)
    if node.deregistered_at is not None:
        raise ConflictError(f"node {node_id} was deregistered", code="node_deregistered")
    if node.approval == NodeApproval.BANNED and not banned_ok:
        raise ConflictError(
            f"node {node_id} is banned: an admin must unban it first", code="node_banned"
        )
    return node


def update_resources(
    session: Session, viewer: User, node_id: int, resources: NodeResources
) -> Node:
    """What the node offers from now on. The scheduler never plans more than its Ray
    worker reports: a node that now claims more is flagged until its agent restarts Ray
    with the new figures (it does so on its own when a heartbeat answer shows them)."""
    node = _live(session, viewer, node_id)
    node.gpu, node.cpu_cores, node.memory_gb = (
        resources.gpu,
        resources.cpu_cores,
        resources.memory,
    )
    session.flush()
    return node


def reset_credential(session: Session, viewer: User, node_id: int) -> tuple[Node, str]:
    """A new credential for the node, shown once; the old one is refused from now on."""
    node = _live(session, viewer, node_id)
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    node.credential_hash = hash_credential(credential)
    node.credential_reset_at = utcnow()
    session.flush()
    return node, credential


def set_drained(session: Session, viewer: User, node_id: int, drained: bool) -> Node:
    """A drained node gets no new work; what runs there finishes."""
    node = _live(session, viewer, node_id)
    node.drained_at = (node.drained_at or utcnow()) if drained else None
    session.flush()
    return node


def busy_jobs(session: Session, node_id: int) -> list[int]:
    """Placed or running jobs with a slot on the node."""
    jobs = session.scalars(select(Job).where(Job.status.in_(ACTIVE))).all()
    return [job.id for job in jobs if any(slot.node_id == node_id for slot in slots_of(job))]


def deregister(session: Session, viewer: User, node_id: int) -> Node:
    """Retire an idle node: it gets no work, its heartbeats and joins are refused, its
    credential is void; its record, usage history and earnings stay."""
    node = _live(session, viewer, node_id, banned_ok=True)
    busy = busy_jobs(session, node.id)
    if busy:
        raise ConflictError(
            f"node {node_id} is running job(s) {', '.join(map(str, busy))}: drain it and "
            "deregister it once they have finished",
            code="node_busy",
        )
    node.deregistered_at = utcnow()
    node.credential_hash = hash_credential(secrets.token_urlsafe(32))  # nobody knows it
    session.flush()
    return node


def unban(session: Session, node_id: int) -> Node:
    node = session.get(Node, node_id)
    if node is None:
        raise NotFoundError(f"node {node_id} not found")
    if node.approval != NodeApproval.BANNED:
        raise ConflictError(f"node {node_id} is not banned", code="not_banned")
    node.approval = NodeApproval.APPROVED.value
    node.banned_at = None
    session.flush()
    return node


def leave(session: Session, node: Node) -> Node:
    """The agent is shutting down: the node is offline now, not after NODE_TIMEOUT."""
    node.left_at = utcnow()
    session.flush()
    return node


__all__ = ["JobStatus"]
