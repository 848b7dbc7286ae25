"""The job spec users submit (ARCHITECTURE §2), validated once at the door.

Seed 003's body is valid as is; everything it leaves out has a default. The JSON key
``model_config`` collides with pydantic's reserved name, so the field is aliased.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from protocol.catalogue import (
    BUILTIN_DATASETS,
    PRESETS,
    builtin_datasets_for,
    hub_id_problem,
    is_hub_id,
)
from protocol.errors import SettingsError
from protocol.model_sizes import override_problem
from protocol.placement import ExtraShare
from protocol.run import DataRequest, JobRequest, ModelRequest, ResourceRequest
from protocol.strategies.registry import default_rules, get_rules
from protocol.strategies.rules import MEMORY_PER_PROCESS_GB


class ModelType(enum.StrEnum):
    SIMPLE_TRANSFORMER = "simple_transformer"
    TEXT_TO_TEXT = "text_to_text"
    CLASSIFIER = "classifier"
    CHAR_RNN = "char_rnn"


class JobTask(enum.StrEnum):
    """What a job does with its model (seed 004's services beside training)."""

    TRAIN = "train"
    VALIDATE = "validate"
    INFER = "infer"


class DataSource(enum.StrEnum):
    HUGGINGFACE = "huggingface"
    LOCAL = "local"
    BUILTIN = "builtin"


MAX_GPUS = 64
MIN_CPU_CORES = 0.1
MIN_MEMORY_GB = MEMORY_PER_PROCESS_GB  # a job runs at least one process
MAX_CPU_CORES = 1024
MAX_MEMORY_GB = 4096
MAX_RUNTIME_S = 30 * 24 * 3600
MAX_TOKENS = Decimal(1_000_000_000)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ModelSpec(_Strict):
    type: ModelType
    model_name: str = Field(min_length=1, max_length=200)
    pretrained: bool | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model_name")
    @classmethod
    def _a_preset_hub_id_job_or_data_root_path(cls, value: str) -> str:
        """A model directory is read on the nodes: an absolute path, or a relative one that
        a loader resolves against its working directory, could name anything there (another
        user's job directory included). So: a hub id, ``job:<id>``, or ``./path`` under
        DISTLM_DATA_ROOT."""
        if source_job_id(value) is not None or is_hub_id(value):
            return value
        path = PurePosixPath(value)
        if value.startswith("./") and ".." not in path.parts:
            return value
        raise ValueError(
            f"model_name {value!r} is not a preset, a Hugging Face hub id ('name' or "
            "'owner/name'), 'job:<id>' of one of your jobs, or a directory relative to "
            "DISTLM_DATA_ROOT written as './models/my-model' (without '..')"
        )


class DataSpec(_Strict):
    data_source: DataSource
    dataset_name: str = Field(min_length=1, max_length=200)
    dataset_config: str | None = Field(None, max_length=200)
    path: str | None = Field(None, max_length=1024)
    split: str | None = Field(None, max_length=64)
    text_column: str | None = Field(None, max_length=128)
    target_column: str | None = Field(None, max_length=128)
    max_samples: StrictInt | None = Field(None, ge=1, le=100_000_000)
    validation_split: StrictFloat | None = Field(None, gt=0, lt=1)

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError("path must be relative to DISTLM_DATA_ROOT, without '..'")
        return value

    @model_validator(mode="after")
    def _source_fields(self) -> DataSpec:
        if self.data_source is DataSource.HUGGINGFACE:
            problem = hub_id_problem(self.dataset_name, "dataset_name")
            if problem:
                raise ValueError(problem)
        if self.data_source is DataSource.BUILTIN and self.dataset_name not in BUILTIN_DATASETS:
            known = ", ".join(sorted(BUILTIN_DATASETS))
            raise ValueError(f"unknown builtin dataset '{self.dataset_name}' (known: {known})")
        if self.data_source is DataSource.LOCAL and not self.path:
            raise ValueError("data_source 'local' needs 'path' (relative to DISTLM_DATA_ROOT)")
        return self


class TrainingSpec(BaseModel):
    """The strategy plus its knobs. The knobs are the strategy's: its parser checks them
    (unknown or out of range: 422 naming the field); only ``num_workers`` is common."""

    model_config = ConfigDict(extra="allow")

    strategy: str | None = Field(None, max_length=64)
    num_workers: StrictInt | None = Field(None, ge=1, le=1024)

    def knobs(self) -> dict[str, Any]:
        """The strategy's own settings, as submitted."""
        return dict(self.model_extra or {})


class Requirements(_Strict):
    """The job's total resources; memory in GB, as in seed 003."""

    gpu: StrictInt = Field(0, ge=0, le=MAX_GPUS)
    # Below a tenth of a core a job cannot do useful work, and Ray cannot place shares
    # finer than 1e-4 once divided among workers.
    cpu_cores: StrictFloat = Field(1.0, ge=MIN_CPU_CORES, le=MAX_CPU_CORES)
    memory: StrictFloat = Field(2.0, ge=MIN_MEMORY_GB, le=MAX_MEMORY_GB)


class InferenceSpec(_Strict):
    """How an ``infer`` job predicts (``batch_size`` also sets a ``validate`` job's)."""

    top_k: StrictInt = Field(1, ge=1, le=1000)
    confidence_threshold: StrictFloat | StrictInt = Field(0.0, ge=0, le=1)
    return_full_probabilities: bool = False
    batch_size: StrictInt = Field(64, ge=1, le=65_536)
    max_new_tokens: StrictInt = Field(32, ge=1, le=4096)
    num_beams: StrictInt = Field(1, ge=1, le=64)


def _reject_unsafe_values(value: Any, where: str = "body") -> None:
    """JSON parsers accept NaN and Infinity, and strings may carry control characters (a NUL
    truncates a path in C libraries): nothing in a job spec may hold either."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: numbers must be finite")
    if isinstance(value, str) and CONTROL_CHARACTERS.search(value):
        raise ValueError(f"{where}: text must not contain control characters")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_unsafe_values(key, where)
            _reject_unsafe_values(item, f"{where}.{key}" if where != "body" else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_unsafe_values(item, f"{where}[{index}]")


CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class JobSpec(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _safe_values(cls, data: Any) -> Any:
        _reject_unsafe_values(data)
        return data

    name: str | None = Field(None, min_length=1, max_length=128)
    model: ModelSpec = Field(alias="model_config")
    data_config: DataSpec
    training_config: TrainingSpec = Field(default_factory=TrainingSpec)
    requirements: Requirements = Field(default_factory=Requirements)
    task: JobTask = JobTask.TRAIN
    inference_config: InferenceSpec | None = None
    max_tokens: Decimal | None = Field(None, gt=0, le=MAX_TOKENS, decimal_places=6)
    max_runtime_s: StrictInt | None = Field(None, ge=1, le=MAX_RUNTIME_S)

    @model_validator(mode="after")
    def _default_inference_config(self) -> JobSpec:
        """A validate or infer job predicts with the defaults unless it says otherwise (set
        first, so the request the strategy checks is the one stored)."""
        if self.task is not JobTask.TRAIN and self.inference_config is None:
            self.inference_config = InferenceSpec()
        return self

    @model_validator(mode="after")
    def _a_strategy_can_run_it(self) -> JobSpec:
        """Only a combination a registered strategy can run is accepted: anything else is a
        422 now, never a hold and a failure later."""
        try:
            self._strategy_accepts_it()
        except SettingsError as error:
            raise _at_training_config(error) from None
        return self

    @model_validator(mode="after")
    def _inference_config_for_a_task_that_uses_it(self) -> JobSpec:
        if self.inference_config is not None and self.task is JobTask.TRAIN:
            raise ValueError("inference_config is for jobs with task 'infer' or 'validate'")
        return self

    def _strategy_accepts_it(self) -> None:
        task = self.task.value
        if self.training_config.strategy is None:
            self.training_config.strategy = default_rules(self.model.type.value, task).name
        strategy = get_rules(self.training_config.strategy)
        strategy.check_model_type(self.model.type.value)
        strategy.check_task(task)
        preset_type = PRESETS.get(self.model.model_name)
        if preset_type is not None and preset_type != self.model.type.value:
            raise ValueError(
                f"preset '{self.model.model_name}' is a {preset_type} model, "
                f"not {self.model.type.value}"
            )
        self._builtin_data_fits_model()
        self._model_fits_the_memory()
        settings = strategy.parse_settings(self.training_config.knobs())
        strategy.check_job(self.request(), settings)
        self._workers_fit_the_memory()

    def _model_fits_the_memory(self) -> None:
        """Size overrides are known keys, in range, for a model the job's memory can train
        (``hidden_size: 1e9`` was accepted and failed on the node)."""
        problem = override_problem(
            self.model.type.value, self.model.overrides, self.requirements.memory
        )
        if problem:
            raise ValueError(f"model_config.overrides: {problem}")

    def _workers_fit_the_memory(self) -> None:
        """Each worker is a process of its own (a Python with torch: about a third of a GB
        idle), so a job asking for more workers than its memory holds is refused: 8 workers
        on 0.1 GB were 8 processes of 330 MB billed as 0.1 GB."""
        workers = self.training_config.num_workers
        memory = self.requirements.memory
        if workers is not None and workers * MEMORY_PER_PROCESS_GB > memory + 1e-9:
            raise SettingsError(
                f"num_workers ({workers}) needs at least {workers * MEMORY_PER_PROCESS_GB:g} GB of "
                f"requirements.memory ({MEMORY_PER_PROCESS_GB:g} GB a worker process); it asks "
                f"for {memory:g}",
                "num_workers",
            )

    def request(self) -> JobRequest:
        """What the user asked to run, in the one form the strategies' rules, the scheduler,
        billing and the runner read: built here, stored with the job at submit."""
        model, data, needs = self.model, self.data_config, self.requirements
        inference = self.inference_config.model_dump(mode="json") if self.inference_config else {}
        return JobRequest(
            strategy=self.strategy,
            model=ModelRequest(
                model_type=model.type.value,
                model_name=model.model_name,
                pretrained=model.pretrained,
                overrides=dict(model.overrides),
            ),
            data=DataRequest(**data.model_dump(mode="json")),
            knobs=self.training_config.knobs(),
            task=self.task.value,
            inference=inference,
            requirements=ResourceRequest(
                gpu=needs.gpu, cpu_cores=needs.cpu_cores, memory_gb=needs.memory
            ),
            num_workers=self.training_config.num_workers,
        )

    def extra_shares(self) -> tuple[ExtraShare, ...]:
        """The job's parts beside its requirements (split's loaders), for the price."""
        strategy = get_rules(self.strategy)
        settings = strategy.parse_settings(self.training_config.knobs())
        return strategy.extra_shares(self.request(), settings)

    def _builtin_data_fits_model(self) -> None:
        data = self.data_config
        if data.data_source is not DataSource.BUILTIN:
            return
        if self.model.type.value not in BUILTIN_DATASETS[data.dataset_name]:
            suitable = builtin_datasets_for(self.model.type.value)
            raise ValueError(
                f"built-in dataset '{data.dataset_name}' cannot train a {self.model.type.value} "
                f"model (use {', '.join(suitable)})"
            )

    @property
    def strategy(self) -> str:
        assert self.training_config.strategy is not None
        return self.training_config.strategy

    def display_name(self) -> str:
        return self.name or f"{self.model.model_name} on {self.data_config.dataset_name}"

    def normalised(self) -> dict[str, Any]:
        """The spec with defaults filled in, as stored and as hashed for idempotency."""
        return self.model_dump(mode="json", by_alias=True)

    def request_hash(self) -> str:
        canonical = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# Fields a strategy checks that are not its knobs: where the 422 points for them.
OUTSIDE_TRAINING_CONFIG = {"task": ("task",), "split": ("data_config", "split")}


def _at_training_config(error: SettingsError) -> ValidationError:
    """A strategy's refusal as a validation error located at the knob it names, so the 422
    says ``training_config.<knob>``."""
    location = OUTSIDE_TRAINING_CONFIG.get(error.field or "") or (
        ("training_config", error.field) if error.field else ("training_config",)
    )
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", "{reason}", {"reason": str(error)}),
        loc=location,
        input=None,
    )
    return ValidationError.from_exception_data("JobSpec", [detail])


SOURCE_JOB = re.compile(r"job:(\d{1,18})")


def source_job_id(model_name: str) -> int | None:
    """The job whose trained model ``model_name`` names (``job:<id>``), if it names one."""
    match = SOURCE_JOB.fullmatch(model_name)
    return int(match.group(1)) if match else None
