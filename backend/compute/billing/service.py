"""Where jobs meet the ledger: prices from settings, the hold at submit, settlement at the end."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.audits.held import audited_nodes
from compute.billing.pending_credit import refused_nodes
from compute.billing.usage import JobUsage
from compute.jobs.spec import MAX_RUNTIME_S, MAX_TOKENS, JobSpec, Requirements
from compute.jobs.strategy import extra_shares
from compute.models import Job, Node
from core.errors import InvalidInputError
from core.settings import Settings
from ledger.pricing import (
    CostBreakdown,
    Rates,
    price_reservation,
    tokens_to_micro,
)
from ledger.settlement import NodeUsage, SettlementResult, settle_job
from protocol.placement import ExtraShare


def rates_from(settings: Settings) -> Rates:
    return Rates.of(
        gpu_hour=settings.tokens_per_gpu_hour,
        cpu_core_hour=settings.tokens_per_cpu_core_hour,
        memory_gb_hour=settings.tokens_per_memory_gb_hour,
        fee_percent=settings.platform_fee_percent,
        min_job_charge=settings.min_job_charge,
    )


@dataclass(frozen=True)
class Estimate:
    breakdown: CostBreakdown
    runtime_s: int
    cap: int | None  # max_tokens in micro-tokens, if given

    @property
    def total(self) -> int:
        """What the hold will be: the full reservation, or the cap if lower."""
        full = self.breakdown.total
        return min(full, self.cap) if self.cap is not None else full


def estimate_cost(
    requirements: Requirements,
    *,
    runtime_s: int,
    cap: int | None,
    rates: Rates,
    extra: Sequence[ExtraShare] = (),
) -> Estimate:
    """The hold: the requirements and every extra part (split's loaders) for the runtime."""
    gpu = requirements.gpu + sum(part.gpu * part.count for part in extra)
    cpu = requirements.cpu_cores + sum(part.cpu_cores * part.count for part in extra)
    memory = requirements.memory + sum(part.memory_gb * part.count for part in extra)
    breakdown = price_reservation(gpu, cpu, memory, runtime_s, rates)
    return Estimate(breakdown=breakdown, runtime_s=runtime_s, cap=cap)


class EstimateRequest(BaseModel):
    """What POST /tokens/estimate takes when it is not a whole job spec."""

    model_config = ConfigDict(extra="forbid")

    requirements: Requirements = Field(default_factory=Requirements)
    max_runtime_s: int | None = Field(None, ge=1, le=MAX_RUNTIME_S)
    max_tokens: Decimal | None = Field(None, gt=0, le=MAX_TOKENS, decimal_places=6)


def estimate_for(body: dict[str, Any], *, default_runtime_s: int, rates: Rates) -> Estimate:
    """Price `{requirements, max_runtime_s, max_tokens?}` or a whole job spec."""
    request: JobSpec | EstimateRequest = (
        JobSpec.model_validate(body)
        if "model_config" in body
        else EstimateRequest.model_validate(body)
    )
    cap = tokens_to_micro(request.max_tokens) if request.max_tokens is not None else None
    return estimate_cost(
        request.requirements,
        runtime_s=request.max_runtime_s or default_runtime_s,
        cap=cap,
        rates=rates,
        extra=request.extra_shares() if isinstance(request, JobSpec) else (),
    )


def job_estimate(job: Job, rates: Rates) -> Estimate:
    requirements = Requirements(gpu=job.gpu, cpu_cores=job.cpu_cores, memory=job.memory_gb)
    return estimate_cost(
        requirements,
        runtime_s=job.max_runtime_s,
        cap=job.max_tokens_micro,
        rates=rates,
        extra=extra_shares(job),
    )


def settle(
    session: Session,
    job: Job,
    usage: JobUsage,
    rates: Rates,
    *,
    placed_on: Iterable[int] = (),
) -> SettlementResult:
    """Settle the job's escrow with its usage on the nodes it ran on, and nothing-yet on the
    others it was placed on (once; later calls no-op): each node's pending credit is released
    to its owner, or voided back to the payer if the node is banned by then."""
    work = usage.by_node(placed_on)
    found = session.execute(select(Node.id, Node.owner_id).where(Node.id.in_(list(work))))
    owners = dict(found.all())
    unknown = work.keys() - owners.keys()
    if unknown:
        raise InvalidInputError(f"usage names unknown nodes: {sorted(unknown)}")
    return settle_job(
        session,
        job_id=job.id,
        job_owner_id=job.owner_id,
        usage=[NodeUsage(node, owners[node], seconds) for node, seconds in work.items()],
        rates=rates,
        refused_nodes=refused_nodes(session, work, job.id),
        held_nodes=audited_nodes(session, job.id),
        memo=f"settlement of job {job.id} ({job.status})",
    )


def job_nodes(job: Job) -> set[int]:
    """The nodes a job's work is on or may come from: those its saved and unsaved usage
    name, and its current placement's."""
    nodes = {int(node) for node in job.usage or {}}
    nodes |= {int(key.split("/", 2)[1]) for key in job.unsaved_usage or {}}
    nodes |= {int(slot["node_id"]) for slot in job.placement or []}
    return nodes


def node_owners(session: Session, jobs: Iterable[Job]) -> dict[int, int]:
    """The owners of these jobs' nodes (not of every node ever registered)."""
    ids = set().union(*(job_nodes(job) for job in jobs))
    if not ids:
        return {}
    return dict(session.execute(select(Node.id, Node.owner_id).where(Node.id.in_(ids))).all())


def charged_nodes(owners: dict[int, int], job: Job) -> frozenset[int]:
    """The job's nodes whose usage its owner pays for: everyone's but their own."""
    return frozenset(
        node for node in job_nodes(job) if node in owners and owners[node] != job.owner_id
    )
