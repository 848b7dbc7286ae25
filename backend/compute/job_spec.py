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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ray_module.es.settings import parse_es_settings
from ray_module.federated.settings import parse_fedavg_settings

MICRO = 1_000_000  # ledger units per token


class ModelType(enum.StrEnum):
    SIMPLE_TRANSFORMER = "simple_transformer"
    TEXT_TO_TEXT = "text_to_text"
    CLASSIFIER = "classifier"
    CHAR_RNN = "char_rnn"


class Strategy(enum.StrEnum):
    DATA_PARALLEL = "data_parallel"
    FEDAVG = "fedavg"
    ES = "es"
    SPLIT = "split"


class DataSource(enum.StrEnum):
    HUGGINGFACE = "huggingface"
    LOCAL = "local"
    BUILTIN = "builtin"


DEFAULT_STRATEGY: dict[ModelType, Strategy] = {
    ModelType.SIMPLE_TRANSFORMER: Strategy.DATA_PARALLEL,
    ModelType.TEXT_TO_TEXT: Strategy.FEDAVG,
    ModelType.CLASSIFIER: Strategy.FEDAVG,
    ModelType.CHAR_RNN: Strategy.ES,
}

# Which model types each strategy knows how to train.
STRATEGY_MODEL_TYPES: dict[Strategy, frozenset[ModelType]] = {
    Strategy.DATA_PARALLEL: frozenset({ModelType.SIMPLE_TRANSFORMER, ModelType.CLASSIFIER}),
    Strategy.FEDAVG: frozenset({ModelType.TEXT_TO_TEXT, ModelType.CLASSIFIER}),
    Strategy.ES: frozenset({ModelType.CHAR_RNN}),
    Strategy.SPLIT: frozenset({ModelType.CLASSIFIER, ModelType.SIMPLE_TRANSFORMER}),
}

# Offline presets (random init, no download) and the model type each belongs to.
PRESET_MODEL_TYPES: dict[str, ModelType] = {
    "tiny-gpt2": ModelType.SIMPLE_TRANSFORMER,
    "tiny-t5": ModelType.TEXT_TO_TEXT,
    "tiny-bart": ModelType.TEXT_TO_TEXT,
    "mlp": ModelType.CLASSIFIER,
    "cnn": ModelType.CLASSIFIER,
    "rnn": ModelType.CHAR_RNN,
}

# Built-in datasets and the model types that can train on them.
BUILTIN_DATASET_TYPES: dict[str, frozenset[ModelType]] = {
    "digits": frozenset({ModelType.CLASSIFIER}),
    "stdlib-text": frozenset({ModelType.SIMPLE_TRANSFORMER, ModelType.CHAR_RNN}),
    "synthetic-t2t": frozenset({ModelType.TEXT_TO_TEXT}),
}
BUILTIN_DATASETS = frozenset(BUILTIN_DATASET_TYPES)

MAX_GPUS = 64
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
    def _no_paths_outside_the_data_root(cls, value: str) -> str:
        # A model directory is read on the nodes: an absolute path could name anything there,
        # another user's job directory included.
        path = PurePosixPath(value)
        if path.is_absolute() or value.startswith("~") or ".." in path.parts:
            raise ValueError(
                "a local model directory is named relative to DISTLM_DATA_ROOT "
                "(e.g. ./models/my-model), without '..'"
            )
        return value


class DataSpec(_Strict):
    data_source: DataSource
    dataset_name: str = Field(min_length=1, max_length=200)
    dataset_config: str | None = Field(None, max_length=200)
    path: str | None = Field(None, max_length=1024)
    split: str | None = Field(None, max_length=64)
    text_column: str | None = Field(None, max_length=128)
    target_column: str | None = Field(None, max_length=128)
    max_samples: int | None = Field(None, ge=1, le=100_000_000)
    validation_split: float | None = Field(None, gt=0, lt=1)

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
        if self.data_source is DataSource.BUILTIN and self.dataset_name not in BUILTIN_DATASETS:
            known = ", ".join(sorted(BUILTIN_DATASETS))
            raise ValueError(f"unknown builtin dataset '{self.dataset_name}' (known: {known})")
        if self.data_source is DataSource.LOCAL and not self.path:
            raise ValueError("data_source 'local' needs 'path' (relative to DISTLM_DATA_ROOT)")
        return self


class TrainingSpec(BaseModel):
    """The strategy plus its knobs; strategy-specific fields are checked by the strategy."""

    model_config = ConfigDict(extra="allow")

    strategy: Strategy | None = None
    epochs: int | None = Field(None, ge=1, le=10_000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    learning_rate: float | None = Field(None, gt=0, le=10)
    seq_len: int | None = Field(None, ge=2, le=65_536)
    num_workers: int | None = Field(None, ge=1, le=1024)


class Requirements(_Strict):
    """The job's total resources; memory in GB, as in seed 003."""

    gpu: int = Field(0, ge=0, le=MAX_GPUS)
    cpu_cores: float = Field(1.0, gt=0, le=MAX_CPU_CORES)
    memory: float = Field(2.0, gt=0, le=MAX_MEMORY_GB)


def _reject_non_finite(value: Any, where: str = "body") -> None:
    """JSON parsers accept NaN and Infinity; nothing in a job spec may be either."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: numbers must be finite")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_non_finite(item, f"{where}.{key}" if where != "body" else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_non_finite(item, f"{where}[{index}]")


class JobSpec(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _finite_numbers(cls, data: Any) -> Any:
        _reject_non_finite(data)
        return data

    name: str | None = Field(None, min_length=1, max_length=128)
    model: ModelSpec = Field(alias="model_config")
    data_config: DataSpec
    training_config: TrainingSpec = Field(default_factory=TrainingSpec)
    requirements: Requirements = Field(default_factory=Requirements)
    max_tokens: Decimal | None = Field(None, gt=0, le=MAX_TOKENS, decimal_places=6)
    max_runtime_s: int | None = Field(None, ge=1, le=MAX_RUNTIME_S)

    @model_validator(mode="after")
    def _strategy_fits_model(self) -> JobSpec:
        if self.training_config.strategy is None:
            self.training_config.strategy = DEFAULT_STRATEGY[self.model.type]
        strategy = self.training_config.strategy
        if self.model.type not in STRATEGY_MODEL_TYPES[strategy]:
            allowed = ", ".join(sorted(t.value for t in STRATEGY_MODEL_TYPES[strategy]))
            raise ValueError(
                f"strategy '{strategy.value}' cannot train model type "
                f"'{self.model.type.value}' (it trains: {allowed})"
            )
        preset_type = PRESET_MODEL_TYPES.get(self.model.model_name)
        if preset_type is not None and preset_type is not self.model.type:
            raise ValueError(
                f"preset '{self.model.model_name}' is a {preset_type.value} model, "
                f"not {self.model.type.value}"
            )
        self._builtin_data_fits_model()
        if strategy is Strategy.FEDAVG:
            # Strategy knobs are checked here so a typo is a 422, not a failed run.
            settings = parse_fedavg_settings(self.training_config.model_dump(exclude_none=True))
            workers = self.training_config.num_workers
            if workers is not None and workers > settings.clients:
                raise ValueError(
                    f"num_workers ({workers}) exceeds clients ({settings.clients}): "
                    "each worker hosts at least one client"
                )
            if settings.partition == "node_local":
                self._node_local_data_named()
        elif strategy is Strategy.ES:
            parse_es_settings(self.training_config.model_dump(exclude_none=True))
        return self

    def _node_local_data_named(self) -> None:
        data = self.data_config
        if data.data_source is not DataSource.LOCAL or "{client}" not in (data.path or ""):
            raise ValueError(
                "partition 'node_local' reads each client's own file on its node: use "
                "data_source 'local' with a path containing {client}, e.g. clients/{client}.csv"
            )

    def _builtin_data_fits_model(self) -> None:
        data = self.data_config
        if data.data_source is not DataSource.BUILTIN:
            return
        fits = BUILTIN_DATASET_TYPES[data.dataset_name]
        if self.model.type not in fits:
            suitable = sorted(
                n for n, types in BUILTIN_DATASET_TYPES.items() if self.model.type in types
            )
            raise ValueError(
                f"built-in dataset '{data.dataset_name}' cannot train a {self.model.type.value} "
                f"model (use {', '.join(suitable)})"
            )

    @property
    def strategy(self) -> Strategy:
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


SOURCE_JOB = re.compile(r"job:(\d{1,18})")


def source_job_id(model_name: str) -> int | None:
    """The job whose trained model ``model_name`` names (``job:<id>``), if it names one."""
    match = SOURCE_JOB.fullmatch(model_name)
    return int(match.group(1)) if match else None


def tokens_to_micro(amount: Decimal) -> int:
    return int((amount * MICRO).to_integral_value())
