"""Jobs on the nodes' own Ray: what each node's agent is told to run, and the dispatcher's
view of those runs.

The gateway runs no Ray. A placed job's attempt is an assignment: its driver node's agent
starts the job's driver, which reports over HTTP with a credential scoped to the job and
attempt (``/runs``); the dispatcher reads what arrived from the run inbox. The assignment
list is recomputed from the jobs' state at every ask, so stopping a run is nothing more than
the job leaving the list. A node whose agent has not asked for NODE_TIMEOUT is gone, and so is
every attempt placed on it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from auth.models import User
from auth.run_tokens import RunClaims, create_run_token
from compute.dispatch.run_configs import run_config
from compute.dispatch.run_inbox import run_events_after
from compute.jobs.state import JobStatus
from compute.models import Job, Node, RunEvent
from compute.nodes.service import NodeApproval, owner_cannot_lend
from compute.storage.run_uploads import job_dir
from core.db import read_only_factory, session_scope, utcnow
from core.settings import Settings
from protocol.assignment import DRIVER, MEMBER, ClusterOrder, RunAssignment, Share
from protocol.events import ArtifactEvent, RecordedEvent, RunState, StatusEvent
from protocol.nodes import LiveNode
from protocol.run import RunConfig, run_config_to_wire
from protocol.wire import recorded_to_wire

# How often an agent asks for its runs: a placed job starts within about this long.
RUNS_POLL_S = 1.0
# While one of its multi-node attempts forms its cluster (the driver's node has a head to
# report, the others wait to hear where it is), sooner: each hop would otherwise wait a poll.
CLUSTER_FORMING_POLL_S = 0.25
# A run credential outlives its attempt's longest run by this much (the gateway refuses it
# once the attempt has ended anyway).
RUN_TOKEN_SLACK = dt.timedelta(hours=1)


def placed_nodes(placement: list[dict] | None) -> list[int]:
    return sorted({int(slot["node_id"]) for slot in placement or []})


def driver_node_id(placement: list[dict] | None) -> int | None:
    """Where the job's driver runs: the node of its first worker (a split job's trainer;
    loaders feed it), else of its first slot."""
    slots = placement or []
    workers = [slot for slot in slots if slot.get("role", "worker") == "worker"]
    chosen = (workers or slots)[:1]
    return int(chosen[0]["node_id"]) if chosen else None


def share_on(placement: list[dict] | None, node_id: int) -> Share:
    slots = [slot for slot in placement or [] if int(slot["node_id"]) == node_id]
    return Share(
        cpu_cores=sum(float(slot["cpu_cores"]) for slot in slots),
        gpu=sum(int(slot["gpu"]) for slot in slots),
        memory_gb=sum(float(slot["memory_gb"]) for slot in slots),
    )


def cluster_token(secret_key: str, job_id: int, attempt: int) -> str:
    """The Ray token of one attempt's cluster: made from the gateway's secret, so nothing is
    stored, and of no use for any other job or attempt."""
    message = f"distlm-ray-cluster:{job_id}:{attempt}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def cluster_order(job: Job, settings: Settings) -> ClusterOrder | None:
    nodes = placed_nodes(job.placement)
    if len(nodes) < 2:
        return None  # on the node's warm Ray
    return ClusterOrder(
        token=cluster_token(settings.secret_key, job.id, job.attempts),
        address=job.cluster_address or "",
        nodes=tuple(nodes),
    )


def runs_for_node(session: Session, node: Node, settings: Settings) -> list[RunAssignment]:
    """The running attempts placed on ``node``, each with the node's share and, for a
    multi-node job, its cluster; the driver's also with the job as the node receives it and a
    credential for the attempt."""
    runs = []
    for job in session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING.value).order_by(Job.id)
    ):
        if node.id not in placed_nodes(job.placement):
            continue
        share, cluster = share_on(job.placement, node.id), cluster_order(job, settings)
        if driver_node_id(job.placement) != node.id:
            runs.append(RunAssignment(job.id, job.attempts, MEMBER, share=share, cluster=cluster))
            continue
        config = run_config(
            job,
            session,
            data_root=settings.data_root,
            storage_path=settings.storage_path,
            resolve_sources=False,  # the driver downloads a source job's model
        )
        token = create_run_token(
            RunClaims(job.id, job.attempts, node.id),
            secret_key=settings.secret_key,
            expires_in=dt.timedelta(seconds=job.max_runtime_s) + RUN_TOKEN_SLACK,
        )
        wire = run_config_to_wire(config)
        started = attempt_heard_from(session, job.id, job.attempts)
        runs.append(
            RunAssignment(job.id, job.attempts, DRIVER, wire, token, share, cluster, started)
        )
    return runs


def attempt_heard_from(session: Session, job_id: int, attempt: int) -> bool:
    found = session.scalar(
        select(RunEvent.id).where(RunEvent.job_id == job_id, RunEvent.attempt == attempt).limit(1)
    )
    return found is not None


def note_lost_driver(session: Session, node: Node, job_id: int, attempt: int, why: str) -> None:
    """The driver node's agent says the attempt's driver is gone without a word (it crashed,
    or the agent restarted and lost it): the attempt fails, retryably, as if the driver had
    said so, unless it already ended. Taken only from that node, for the running attempt."""
    if driven_attempt(session, node, job_id, attempt) is None:
        return
    seqs = session.scalars(
        select(RunEvent.seq).where(RunEvent.job_id == job_id, RunEvent.attempt == attempt)
    ).all()
    reason = f"its driver on node {node.id} is gone: {why[:300]}"
    lost = RecordedEvent(
        max(seqs, default=0) + 1,
        time.time(),
        StatusEvent(RunState.FAILED, reason, retryable=True),
    )
    session.add(
        RunEvent(
            job_id=job_id,
            attempt=attempt,
            seq=lost.seq,
            kind="status",
            payload=recorded_to_wire(lost),
            received_at=utcnow(),
        )
    )


def driven_attempt(session: Session, node: Node, job_id: int, attempt: int) -> Job | None:
    """The job, when it is running ``attempt`` and ``node`` drives it (a node speaks only
    for the attempts it drives, and only while they run)."""
    job = session.get(Job, job_id)
    if (
        job is None
        or job.status != JobStatus.RUNNING.value
        or job.attempts != attempt
        or driver_node_id(job.placement) != node.id
    ):
        return None
    return job


def note_cluster(session: Session, node: Node, job_id: int, attempt: int, address: str) -> None:
    """The driver node's agent started the attempt's cluster at ``address``: the other nodes
    are told to join it. Taken only from that node, for the running attempt."""
    job = driven_attempt(session, node, job_id, attempt)
    if job is None or len(placed_nodes(job.placement)) < 2:
        return  # a late report of an ended attempt: nothing to tell anyone
    job.cluster_address = address


def note_poll(node: Node, settings: Settings, now: dt.datetime) -> None:
    """The agent asked: it is ready to run. Written a few times per NODE_TIMEOUT, not at
    every ask (each is a write), and at the first ask since one of its attempts was lost."""
    last = node.runs_polled_at
    every = dt.timedelta(seconds=settings.node_timeout / 4)
    if last is None or lost_since_asked(node) or now - last >= every:
        node.runs_polled_at = now


def note_agent_setup(
    node: Node,
    *,
    single_node_only: bool,
    pool: str | None,
    offers: tuple[float, int] | None,
) -> None:
    """What the agent says of itself at each ask, written only where it changed (the
    scheduler plans with it from its next round)."""
    if node.single_node_only != single_node_only:
        node.single_node_only = single_node_only
    if node.ray_pool != pool:
        node.ray_pool = pool
    if offers is not None and (node.offered_cpus, node.offered_gpus) != offers:
        node.offered_cpus, node.offered_gpus = offers


def lost_since_asked(node: Node) -> bool:
    """An attempt it took part in was lost, and its agent has not asked for runs since."""
    lost, asked = node.lost_run_at, node.runs_polled_at
    return lost is not None and (asked is None or asked <= lost)


def node_shut_out(session: Session, node: Node | None) -> str:
    """Why a node may no longer take part in any job ('' when it may): retired, banned, or
    its owner's account disabled or no longer a node owner's."""
    if node is None or node.deregistered_at is not None:
        return "its node was deregistered"
    if node.approval == NodeApproval.BANNED.value:
        return f"node {node.id} was banned"
    if why := owner_cannot_lend(session.get(User, node.owner_id)):
        return f"node {node.id}'s {why}"
    return ""


def node_gone(
    session: Session,
    node: Node | None,
    now: dt.datetime,
    timeout: dt.timedelta,
    *,
    listening_since: dt.datetime,
) -> str:
    """Why a node can no longer run its part of a job ('' when it can). Silence from before
    ``listening_since`` (this gateway was down) is not held against the node."""
    if why := node_shut_out(session, node):
        return why
    assert node is not None
    if node.runs_polled_at is None:
        return f"node {node.id} never asked for its runs"
    if now - max(node.runs_polled_at, listening_since) > timeout:
        return f"node {node.id} stopped answering"
    if node.left_at is not None and node.left_at >= node.runs_polled_at:
        return f"node {node.id} left"
    return ""


class AgentRunners:
    """The dispatcher's runner port when the nodes run their jobs: launching and stopping
    are the job's state itself (the agents follow it), events come from the run inbox."""

    def __init__(self, session_factory: sessionmaker[Session], settings: Settings) -> None:
        self.read_factory = read_only_factory(session_factory)
        self.settings = settings
        self.timeout = dt.timedelta(seconds=settings.node_timeout)
        self.listening_since = utcnow()
        self.lost: dict[int, str] = {}  # why fetch_events last gave a job up

    def live_nodes(self) -> dict[int, LiveNode]:
        now = utcnow()
        with session_scope(self.read_factory) as session:
            nodes = session.scalars(select(Node).where(Node.runs_polled_at.is_not(None))).all()
            return {
                node.id: LiveNode(
                    node_id=node.id,
                    ray_node_id="",
                    # A node of a lost attempt is not, until its agent has asked since.
                    alive=not self.gone(session, node, now) and not lost_since_asked(node),
                    # What its agent says the machine offers: less than registered is
                    # flagged, and a flagged node is not scheduled.
                    cpus=float(node.cpu_cores if node.offered_cpus is None else node.offered_cpus),
                    gpus=float(node.gpu if node.offered_gpus is None else node.offered_gpus),
                )
                for node in nodes
            }

    def gone(self, session: Session, node: Node | None, now: dt.datetime) -> str:
        return node_gone(session, node, now, self.timeout, listening_since=self.listening_since)

    def why_lost(self, job_id: int) -> str:
        return self.lost.pop(job_id, "its node was lost")

    def launch_runner(self, config: RunConfig) -> None:
        """Nothing to do: the driver node's agent finds the attempt at its next ask."""

    def stop_runner(self, job_id: int) -> None:
        """Nothing to do: once the job is no longer running that attempt, its agents stop
        it at their next ask, and the attempt's credential is refused."""

    def fetch_events(self, job_id: int, after: int) -> list[RecordedEvent] | None:
        """The attempt's new events; None when its driver's node is gone, or any of its
        nodes is shut out (the attempt with it: the job resumes elsewhere from its last
        accepted checkpoint). A member node that falls silent is the strategy's to handle,
        as its actors die with the machine: FedAvg goes on without that client, the others
        fail, retryable, and resume elsewhere."""
        now = utcnow()
        with session_scope(self.read_factory) as session:
            job = session.get(Job, job_id)
            if job is None or job.status != JobStatus.RUNNING.value:
                return []
            driver = driver_node_id(job.placement)
            for node_id in placed_nodes(job.placement):
                node = session.get(Node, node_id)
                if node_id == driver:
                    why = self.gone(session, node, now)
                else:
                    why = node_shut_out(session, node)
                if why:
                    self.lost[job_id] = why
                    return None
            fresh = run_events_after(session, job_id, job.attempts, after)
        model = str(job_dir(self.settings.storage_path, job_id) / "model")
        return [self.on_gateway(recorded, model) for recorded in fresh]

    @staticmethod
    def on_gateway(recorded: RecordedEvent, model: str) -> RecordedEvent:
        """A driver's model is the one it uploaded (whatever path it names on its node)."""
        if isinstance(recorded.event, ArtifactEvent):
            return dataclasses.replace(recorded, event=ArtifactEvent(model))
        return recorded


def next_poll_s(assignments: list[RunAssignment]) -> float:
    """When the node should ask again: soon while a cluster of its attempts has no known
    address (its head is starting, or the node waits to join it), else ``RUNS_POLL_S``."""
    forming = any(a.cluster is not None and not a.cluster.address for a in assignments)
    return CLUSTER_FORMING_POLL_S if forming else RUNS_POLL_S
