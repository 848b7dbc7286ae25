"""Bodies of /jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel

from app.schemas.common import ResourcesOut
from compute.billing.job_money import JobMoney
from compute.billing.metering import unsaved_events
from compute.billing.usage import JobUsage, figures_of
from compute.models import Job, TrainerAudit
from ledger.pricing import tokens

# Shown in /docs, and the fuzzer's first inputs: seed 003's job as typed, and one that runs
# offline on built-in data.
JOB_SPEC_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed": {
        "summary": "Seed 003's job (GPT-2 on wikitext from the hub)",
        "value": {
            "model_config": {"type": "simple_transformer", "model_name": "gpt2"},
            "data_config": {"data_source": "huggingface", "dataset_name": "wikitext"},
            "requirements": {"gpu": 1, "cpu_cores": 4, "memory": 16},
        },
    },
    "offline": {
        "summary": "A char-RNN on built-in text, no hub needed",
        "value": {
            "name": "char-rnn on docstrings",
            "model_config": {"type": "char_rnn", "model_name": "rnn"},
            "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
            "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
        },
    },
}


class NodeEarning(BaseModel):
    node_id: int
    tokens: float


class AuditOut(BaseModel):
    """An audit of the node that drove the job (split's trainer or predictor): its work done
    again by an audit job on another node. ``status``: ``pending`` (the node's credit waits
    for it; a disagreement is refereed on a third owner's node first), ``valid`` (released),
    ``invalid`` (voided back to you; ``detail`` says what differed: the model or results
    that node made are not to be trusted, what the job cost you is given back and the job
    is computed again as ``recompute_job_id``), ``unaudited`` (it could not be made: the
    credit was released, ``detail`` says why)."""

    node_id: int
    status: str
    detail: str
    audit_job_id: int | None
    recompute_job_id: int | None = None


class JobOut(BaseModel):
    id: int
    owner_id: int
    name: str
    status: str
    status_reason: str
    model_type: str
    strategy: str
    requirements: ResourcesOut
    max_runtime_s: int
    max_tokens: float | None
    spec: dict[str, Any]
    placement: list[dict[str, Any]] | None
    attempts: int
    usage: dict[str, Any] | None  # by node: work saved by checkpoints, what is charged
    # by node: the running attempt's work since its last checkpoint (charged once saved,
    # dropped if the attempt is lost)
    unsaved_usage: dict[str, Any]
    usage_by_stage: dict[str, dict[str, float]]  # split: the trainer's and loaders' totals
    # Tokens. cost_so_far: what is charged once settled; before that the metered work on
    # others' nodes, at least the minimum charge once there is any, at most the hold.
    cost_so_far: float | None = None
    hold: float | None = None  # the most the job can cost (held in escrow until it ends)
    charged: float | None = None  # settled: what was taken (null until the job ends)
    refunded: float | None = None  # settled: the rest of the hold, back to its owner
    platform_fee: float | None = None  # settled: the platform's part of what was charged
    earnings: list[NodeEarning] = []  # settled: what each node's owner earned
    # charged for saved work, waiting to be released to the nodes' owners (or voided)
    pending_credit: float | None = None
    voided: float | None = None  # pending credit given back: a node's work was refused
    # given back by the platform: the job's result was found invalid (see ``audits``)
    compensated: float | None = None
    audits: list[AuditOut] = []  # of the node that drove it, where one was drawn
    has_artifact: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    first_step_at: dt.datetime | None
    finished_at: dt.datetime | None


def micro_to_tokens(amount: int | None) -> float | None:
    return None if amount is None else tokens(amount)


def with_money(out: JobOut, money: JobMoney) -> JobOut:
    return out.model_copy(
        update={
            "cost_so_far": micro_to_tokens(money.cost_so_far),
            "hold": micro_to_tokens(money.hold),
            "charged": micro_to_tokens(money.charged),
            "refunded": micro_to_tokens(money.refunded),
            "platform_fee": micro_to_tokens(money.fees),
            "pending_credit": micro_to_tokens(money.pending),
            "voided": micro_to_tokens(money.voided),
            "compensated": micro_to_tokens(money.compensated),
            "earnings": [
                NodeEarning(node_id=node, tokens=tokens(amount))
                for node, amount in money.earnings.items()
            ],
        }
    )


def with_audits(out: JobOut, audits: list[TrainerAudit]) -> JobOut:
    shown = [
        AuditOut(
            node_id=audit.node_id,
            status="pending" if audit.status in ("snapshot", "running") else audit.status,
            detail=audit.detail,
            audit_job_id=audit.audit_job_id,
            recompute_job_id=audit.recompute_job_id,
        )
        for audit in audits
    ]
    return out.model_copy(update={"audits": shown})


def job_out(job: Job) -> JobOut:
    usage = JobUsage.from_column(job.usage)
    unsaved = JobUsage().plus(unsaved_events(job.unsaved_usage))
    return JobOut(
        id=job.id,
        owner_id=job.owner_id,
        name=job.name,
        status=job.status,
        status_reason=job.status_reason,
        model_type=job.model_type,
        strategy=job.strategy,
        requirements=ResourcesOut(gpu=job.gpu, cpu_cores=job.cpu_cores, memory=job.memory_gb),
        max_runtime_s=job.max_runtime_s,
        max_tokens=micro_to_tokens(job.max_tokens_micro),
        spec=job.spec,
        placement=job.placement,
        attempts=job.attempts,
        usage=None if job.usage is None else usage.to_column(),
        unsaved_usage=unsaved.to_column(),
        usage_by_stage={stage: figures_of(done) for stage, done in usage.by_stage().items()},
        has_artifact=bool(job.artifact_path),
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        first_step_at=job.first_step_at,
        finished_at=job.finished_at,
    )
