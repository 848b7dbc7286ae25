"""The job as a node receives it: what its user asked to run (``JobRequest``: model, data,
strategy and knobs, checked once at submit and stored with the job) plus what the gateway
adds for an attempt (each worker's share and node, storage, attempt). Frozen plain data, so
the gateway, a job's driver and every worker agree on one definition.
``job_request_to_wire``/``job_request_from_wire`` are the request's JSON form as the gateway
stores it; ``run_config_to_wire``/``run_config_from_wire`` a run's over HTTP."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ModelRequest:
    """The model part of a job spec. ``pretrained=None`` means the source's natural default:
    weights for a hub id or a local directory, random initialisation for a preset. The dict
    field makes instances unhashable; they are compared, never used as keys."""

    model_type: str
    model_name: str
    pretrained: bool | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataRequest:
    """The data part of a job spec, plus the data root the runner resolves local paths in."""

    data_source: str  # huggingface | local | builtin
    dataset_name: str
    dataset_config: str | None = None
    path: str | None = None
    split: str | None = None
    text_column: str | None = None
    target_column: str | None = None  # labels or targets (classifiers, text-to-text)
    max_samples: int | None = None
    validation_split: float | None = None
    # Absolute path of DISTLM_DATA_ROOT: None in a stored request, set in a run's config.
    data_root: str | None = None


@dataclass(frozen=True)
class ResourceRequest:
    """The job's total requirements, shared among its workers."""

    gpu: int = 0
    cpu_cores: float = 1.0
    memory_gb: float = 2.0


@dataclass(frozen=True)
class JobRequest:
    """What a user asked to run, checked at submit: the one form of a job spec that the
    strategies' rules, the scheduler, billing and the runner read."""

    strategy: str
    model: ModelRequest
    data: DataRequest
    knobs: dict[str, Any] = field(default_factory=dict)  # the strategy's, as submitted
    task: str = "train"  # train | validate | infer (strategies that list them in ``tasks``)
    inference: dict[str, Any] = field(default_factory=dict)  # inference_config, if any
    requirements: ResourceRequest = ResourceRequest()
    num_workers: int | None = None  # the user's explicit worker count, if any
    # An audit job's orders (the gateway's own, ``compute.audits``): the task it checks
    # ("train", "validate", "infer") and, for infer, which of the rows' batches it predicts.
    audit: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of the job, pinned to one node."""

    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    role: str = "worker"  # "worker", or the role of a strategy's extra part ("loader")
    # Verified credit: whose machine it is (its work is replayed on another owner's) and its
    # run of valid results so far, from which the runner draws how often to replay its work
    # (protocol.trust).
    owner_id: int = 0
    valid_streak: int = 0


@dataclass(frozen=True)
class PublishTarget:
    """Where the node side sends what a run saves (checkpoints, the model, results) and
    fetches what it resumes from, when nodes share no disk with the gateway: the gateway's
    /runs, with the attempt's run credential."""

    url: str
    job_id: int
    attempt: int
    run_token: str = field(repr=False)


@dataclass(frozen=True)
class RunConfig:
    """One attempt of a job: its request (a ``job:<id>`` model resolved, the data root set)
    and where it runs."""

    job_id: int
    request: JobRequest
    workers: tuple[WorkerPlan, ...]
    storage_path: str
    attempt: int = 1
    # None: ``storage_path`` is the gateway's own storage (its Ray's runners share it).
    publish: PublishTarget | None = None

    @property
    def job_dir(self) -> str:
        return f"{self.storage_path}/jobs/{self.job_id}"

    # The request's parts, read where the runner and the strategies use them.
    @property
    def strategy(self) -> str:
        return self.request.strategy

    @property
    def model(self) -> ModelRequest:
        return self.request.model

    @property
    def data(self) -> DataRequest:
        return self.request.data

    @property
    def training(self) -> dict[str, Any]:
        """The strategy's knobs as submitted (checked again by its parser)."""
        return self.request.knobs

    @property
    def task(self) -> str:
        return self.request.task

    @property
    def inference(self) -> dict[str, Any]:
        return self.request.inference


def job_request_to_wire(request: JobRequest) -> dict[str, Any]:
    return asdict(request)


def job_request_from_wire(data: dict[str, Any]) -> JobRequest:
    """A stored or sent ``JobRequest`` back (unknown fields are an error)."""
    parts = dict(data)
    parts["model"] = ModelRequest(**parts["model"])
    parts["data"] = DataRequest(**parts["data"])
    parts["requirements"] = ResourceRequest(**parts["requirements"])
    return JobRequest(**parts)


# A RunConfig's own fields, beside its request's on the wire.
ATTEMPT_FIELDS = tuple(f.name for f in fields(RunConfig) if f.name != "request")


def run_config_to_wire(config: RunConfig) -> dict[str, Any]:
    """One JSON object: the request's fields, and the attempt's beside them."""
    wire = asdict(config)
    return {**wire.pop("request"), **wire}


def run_config_from_wire(data: dict[str, Any]) -> RunConfig:
    """The gateway's own JSON back into a ``RunConfig`` (a driver trusts the gateway it
    fetched it from; unknown fields are an error, so the two sides stay in step)."""
    request = dict(data)
    attempt = {name: request.pop(name) for name in ATTEMPT_FIELDS if name in request}
    attempt["workers"] = tuple(WorkerPlan(**plan) for plan in attempt["workers"])
    if attempt.get("publish") is not None:
        attempt["publish"] = PublishTarget(**attempt["publish"])
    return RunConfig(request=job_request_from_wire(request), **attempt)
