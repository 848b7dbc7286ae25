"""Node registry: register, list, read, heartbeat, approve, ban; over a node's life:
update, new credential, drain, deregister, unban, leave."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, status

from app.deps import (
    AdminUser,
    DbSession,
    NodeCallerDep,
    NodeId,
    NodeOwnerUser,
    Offset,
    SettingsDep,
)
from app.errors import error_responses
from app.schemas.common import Page, ResourcesOut
from app.schemas.nodes import (
    CredentialOut,
    HeartbeatOut,
    JoinOut,
    NodeOut,
    NodeRegisteredOut,
    NodeUpdateIn,
    RunAssignmentOut,
    RunsIn,
    RunsOut,
    nodes_out,
)
from compute.dispatch.agent_runs import (
    next_poll_s,
    note_agent_setup,
    note_cluster,
    note_lost_driver,
    note_poll,
    runs_for_node,
)
from compute.nodes.lifecycle import (
    PICK_UP_NEW_CREDENTIAL,
    deregister,
    leave,
    reset_credential,
    set_drained,
    unban,
    update_resources,
)
from compute.nodes.service import (
    NodeApproval,
    get_node_for,
    join_info,
    list_nodes,
    node_for_heartbeat,
    node_status,
    ready_to_run,
    record_heartbeat,
    register_node,
    set_node_approval,
)
from compute.nodes.spec import HeartbeatSample, NodeRegistration
from core.db import utcnow
from protocol.assignment import assignment_to_wire

router = APIRouter(prefix="/nodes", tags=["nodes"])


@router.post(
    "/register",
    response_model=NodeRegisteredOut,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409),  # you already registered a node of that name
)
def register(
    body: NodeRegistration, owner: NodeOwnerUser, session: DbSession, settings: SettingsDep
) -> NodeOut:
    """Register a machine. The response's `credential` is shown once: keep it for heartbeats."""
    node, credential = register_node(session, owner, body, auto_approve=settings.node_auto_approve)
    return nodes_out(session, [node], settings, credential=credential)[0]


@router.get("", response_model=Page[NodeOut])
def list_(
    viewer: NodeOwnerUser,
    session: DbSession,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> Page[NodeOut]:
    """Your nodes (admins see every node)."""
    nodes, total = list_nodes(session, viewer, limit=limit, offset=offset)
    items = nodes_out(session, nodes, settings)
    return Page[NodeOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/{node_id}", response_model=NodeOut)
def get(
    node_id: NodeId, viewer: NodeOwnerUser, session: DbSession, settings: SettingsDep
) -> NodeOut:
    node = get_node_for(session, viewer, node_id)
    return nodes_out(session, [node], settings)[0]


# 403: the node is banned, or the caller is neither the node nor its owner.
@router.post("/{node_id}/heartbeat", response_model=HeartbeatOut, responses=error_responses(403))
def heartbeat(
    node_id: NodeId,
    caller: NodeCallerDep,
    session: DbSession,
    settings: SettingsDep,
    sample: Annotated[HeartbeatSample | None, Body()] = None,
) -> HeartbeatOut:
    """Report liveness (and optional figures). Authenticate with the node's credential or
    the owner's access token."""
    node = node_for_heartbeat(session, node_id, node=caller.node, user=caller.user)
    received_at = record_heartbeat(session, node, sample or HeartbeatSample())
    return HeartbeatOut(
        node_id=node.id,
        status=node_status(node, now=received_at, timeout_s=settings.node_timeout).value,
        approval=node.approval,
        received_at=received_at,
        next_heartbeat_in_s=settings.node_heartbeat_interval,
        resources=ResourcesOut(gpu=node.gpu, cpu_cores=node.cpu_cores, memory=node.memory_gb),
    )


# 403 as for heartbeats; 409: the node is not approved yet.
@router.get("/{node_id}/join", response_model=JoinOut, responses=error_responses(403, 409))
def join(
    node_id: NodeId,
    caller: NodeCallerDep,
    session: DbSession,
    settings: SettingsDep,
) -> JoinOut:
    """What the node's agent starts its Ray with (approved nodes only). Authenticate with
    the node's credential or the owner's access token."""
    node = node_for_heartbeat(session, node_id, node=caller.node, user=caller.user)
    info = join_info(node, heartbeat_interval_s=settings.node_heartbeat_interval)
    return JoinOut.model_validate(info, from_attributes=True)  # no cluster address or token


# 403 as for heartbeats; 409: the node is not approved.
@router.post("/{node_id}/runs", response_model=RunsOut, responses=error_responses(403, 409))
def runs(
    node_id: NodeId,
    caller: NodeCallerDep,
    session: DbSession,
    settings: SettingsDep,
    reports: Annotated[RunsIn | None, Body()] = None,
) -> RunsOut:
    """What this node runs now (where jobs run on the nodes' own Ray): each attempt placed
    on it; for the attempts whose driver it runs, the job and a credential scoped to it.
    The list is the whole truth: a run it no longer names is to be stopped. Asking says
    the node is ready to run; a node that has not asked for NODE_TIMEOUT loses its runs.
    Authenticate with the node's credential."""
    node = node_for_heartbeat(session, node_id, node=caller.node, user=caller.user)
    ready_to_run(node)
    note_poll(node, settings, utcnow())
    for report in reports.clusters if reports else []:
        note_cluster(session, node, report.job_id, report.attempt, report.address)
    for lost in reports.lost if reports else []:
        note_lost_driver(session, node, lost.job_id, lost.attempt, lost.why)
    offers = reports.offers if reports else None
    note_agent_setup(
        node,
        single_node_only=bool(reports and reports.single_node_only),
        pool=reports.ray_pool if reports else None,
        offers=(offers.cpu_cores, offers.gpu) if offers is not None else None,
    )
    assignments = runs_for_node(session, node, settings)
    return RunsOut(
        runs=[RunAssignmentOut(**assignment_to_wire(a)) for a in assignments],
        poll_in_s=next_poll_s(assignments),
    )


@router.post("/{node_id}/approve", response_model=NodeOut)
def approve(
    node_id: NodeId, _admin: AdminUser, session: DbSession, settings: SettingsDep
) -> NodeOut:
    node = set_node_approval(session, node_id, NodeApproval.APPROVED)
    return nodes_out(session, [node], settings)[0]


@router.post("/{node_id}/ban", response_model=NodeOut)
def ban(node_id: NodeId, _admin: AdminUser, session: DbSession, settings: SettingsDep) -> NodeOut:
    """Ban a node: its heartbeats, joins and run credentials are refused, it is never
    scheduled, and the jobs it takes part in resume elsewhere from their last checkpoint
    (their clusters, with their tokens, end with the attempt). Its pending credit (earned
    for saved work, not yet released) is voided back to each job's payer, and its work is
    not paid for when those jobs settle. Other jobs are untouched."""
    node = set_node_approval(session, node_id, NodeApproval.BANNED)
    return nodes_out(session, [node], settings)[0]


# 409: the node was deregistered.
@router.patch("/{node_id}", response_model=NodeOut, responses=error_responses(409))
def update(
    node_id: NodeId,
    body: NodeUpdateIn,
    viewer: NodeOwnerUser,
    session: DbSession,
    settings: SettingsDep,
) -> NodeOut:
    """Change what the node offers. It takes effect when its agent restarts Ray (a running
    agent does so by itself at its next heartbeat); a node that claims more than its
    machine offers, as its agent says, is flagged and not scheduled."""
    node = update_resources(session, viewer, node_id, body.resources)
    return nodes_out(session, [node], settings)[0]


@router.post("/{node_id}/credential", response_model=CredentialOut, responses=error_responses(409))
def new_credential(node_id: NodeId, viewer: NodeOwnerUser, session: DbSession) -> CredentialOut:
    """A new credential for the node, shown once; the old one is refused from now on."""
    node, credential = reset_credential(session, viewer, node_id)
    return CredentialOut(node_id=node.id, credential=credential, how_to_use=PICK_UP_NEW_CREDENTIAL)


@router.post("/{node_id}/drain", response_model=NodeOut, responses=error_responses(409))
def drain(
    node_id: NodeId, viewer: NodeOwnerUser, session: DbSession, settings: SettingsDep
) -> NodeOut:
    """No new work for the node; jobs already running there finish."""
    node = set_drained(session, viewer, node_id, True)
    return nodes_out(session, [node], settings)[0]


@router.post("/{node_id}/undrain", response_model=NodeOut, responses=error_responses(409))
def undrain(
    node_id: NodeId, viewer: NodeOwnerUser, session: DbSession, settings: SettingsDep
) -> NodeOut:
    node = set_drained(session, viewer, node_id, False)
    return nodes_out(session, [node], settings)[0]


# 409: jobs are running on it (drain it first), or it was deregistered already.
@router.delete("/{node_id}", response_model=NodeOut, responses=error_responses(409))
def deregister_(
    node_id: NodeId, viewer: NodeOwnerUser, session: DbSession, settings: SettingsDep
) -> NodeOut:
    """Retire an idle node: no more work, heartbeats or joins, its credential void. Its
    record, usage history and earnings stay (`status: deregistered`)."""
    node = deregister(session, viewer, node_id)
    return nodes_out(session, [node], settings)[0]


@router.post("/{node_id}/unban", response_model=NodeOut, responses=error_responses(409))
def unban_(
    node_id: NodeId, _admin: AdminUser, session: DbSession, settings: SettingsDep
) -> NodeOut:
    """Lift a ban: the node is approved again and may rejoin (409 if it is not banned)."""
    node = unban(session, node_id)
    return nodes_out(session, [node], settings)[0]


@router.post("/{node_id}/leave", response_model=NodeOut, responses=error_responses(403))
def leave_(
    node_id: NodeId, caller: NodeCallerDep, session: DbSession, settings: SettingsDep
) -> NodeOut:
    """The node's agent is shutting down (its Ctrl-C): the node is `offline` now rather than
    after `NODE_TIMEOUT`, and gets no new work until its next heartbeat. Authenticate as for
    heartbeats."""
    node = leave(session, node_for_heartbeat(session, node_id, node=caller.node, user=caller.user))
    return nodes_out(session, [node], settings)[0]
