"""The job as a node receives it: which model and data, the strategy's knobs, each worker's
share and node. Frozen plain data, so the gateway, a job's driver and every worker agree on one
definition; ``run_config_to_wire``/``run_config_from_wire`` are its JSON form over HTTP."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    data_root: str | None = None  # absolute path of DISTLM_DATA_ROOT


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of the job, pinned to one node."""

    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    role: str = "worker"  # "worker", or the role of a strategy's extra part ("loader")


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
    job_id: int
    strategy: str
    model: ModelRequest
    data: DataRequest
    training: dict  # the strategy's knobs as submitted (checked again by its parser)
    workers: tuple[WorkerPlan, ...]
    storage_path: str
    attempt: int = 1
    task: str = "train"  # train | validate | infer (strategies that list them in ``tasks``)
    inference: dict = field(default_factory=dict)  # inference_config of an infer task
    # None: ``storage_path`` is the gateway's own storage (its Ray's runners share it).
    publish: PublishTarget | None = None

    @property
    def job_dir(self) -> str:
        return f"{self.storage_path}/jobs/{self.job_id}"


def run_config_to_wire(config: RunConfig) -> dict[str, Any]:
    return asdict(config)


def run_config_from_wire(data: dict[str, Any]) -> RunConfig:
    """The gateway's own JSON back into a ``RunConfig`` (a driver trusts the gateway it
    fetched it from; unknown fields are an error, so the two sides stay in step)."""
    fields = dict(data)
    fields["model"] = ModelRequest(**fields["model"])
    fields["data"] = DataRequest(**fields["data"])
    fields["workers"] = tuple(WorkerPlan(**plan) for plan in fields["workers"])
    if fields.get("publish") is not None:
        fields["publish"] = PublishTarget(**fields["publish"])
    return RunConfig(**fields)
