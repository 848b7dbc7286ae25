"""The ``training_config`` knobs of strategy ``split``, and its data stage's share
(``training_config.loader``), checked once (at submit and in the run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from protocol.errors import SettingsError
from protocol.placement import ExtraShare
from protocol.run import JobRequest
from protocol.strategies.knobs import KnobRules, parse_knobs, run_length
from protocol.strategies.rules import (
    MEMORY_PER_PROCESS_GB,
    StrategyRules,
    processes_held,
)

MAX_LOADER_NODES = 64
# The gateway's own task (compute.audits): train a few steps again from an audited job's
# checkpoint, on another node, and report their losses. Users cannot submit it.
AUDIT_TASK = "audit"
# What an audit job's failure says when the audited trainer's checkpoint cannot be loaded:
# the trainer's doing (it saved it), so its work is invalid, not unaudited.
UNUSABLE_CHECKPOINT = "the audited checkpoint cannot be loaded"


def loader_actors(cpu_cores: float, memory_gb: float) -> int:
    """Loader actors of one slot: one per whole core, each with its share of the memory."""
    return processes_held(max(1, int(cpu_cores)), memory_gb)


@dataclass(frozen=True)
class LoaderShare:
    """The data stage: ``nodes`` loader slots of ``cpu_cores`` and ``memory`` GB each; a slot
    runs one loader actor per whole core it holds, as far as its memory holds them."""

    cpu_cores: float = 1.0
    memory: float = 1.0
    nodes: int = 1

    @property
    def actors_per_node(self) -> int:
        return loader_actors(self.cpu_cores, self.memory)


@dataclass(frozen=True)
class SplitSettings:
    epochs: int | None = None  # neither epochs nor max_steps: 3 epochs
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float | None = None  # None: 3e-3 for classifiers, 5e-4 for language models
    prefetch_batches: int = 2  # ready batches pulled to the trainer's node ahead of use
    max_in_flight_batches: int = 8  # asked of loaders and not yet consumed: the bound
    shuffle: bool = True
    augment: bool = False  # images: random shifts, rotations and noise on the loaders
    seed: int = 0
    checkpoint_interval: int | None = None  # steps; None: once per epoch
    validation_split: float = 0.1  # data_config.validation_split wins when set
    seq_len: int = 64  # language models: tokens per sample
    step_delay_s: float = 0.0  # a slow trainer on purpose (tests, benchmarks)
    loader: LoaderShare = LoaderShare()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def total_steps(self, batches_per_epoch: int) -> int:
        return run_length(self.epochs, self.max_steps, batches_per_epoch, default_epochs=3)

    def rate_for(self, model_type: str) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 3e-3 if model_type == "classifier" else 5e-4


RULES = KnobRules(
    strategy="split",
    ints={
        "epochs": (1, 10_000),
        "max_steps": (1, 10_000_000),
        "batch_size": (1, 65_536),
        "prefetch_batches": (0, 1024),
        "max_in_flight_batches": (1, 4096),
        "seed": (0, 2**31 - 1),
        "checkpoint_interval": (1, 10_000_000),
        "seq_len": (2, 65_536),
    },
    positive={"learning_rate": (0.0, 10.0), "validation_split": (0.0, 0.9)},
    non_negative={"step_delay_s": (0.0, 10.0)},
    choices={"shuffle": (True, False), "augment": (True, False)},
    elsewhere={"rounds": "epochs or max_steps", "clients": "loader.nodes", "steps": "max_steps"},
)

LOADER_RULES = KnobRules(
    strategy="split loader",
    ints={"nodes": (1, MAX_LOADER_NODES)},
    positive={"cpu_cores": (0.0, 1024.0), "memory": (0.0, 4096.0)},
)


def parse_split_settings(training: dict[str, Any]) -> SplitSettings:
    knobs = dict(training)
    loader = knobs.pop("loader", None)
    names = (f.name for f in fields(SplitSettings) if f.name != "loader")
    values = parse_knobs(knobs, RULES, names)
    for flag in ("shuffle", "augment"):
        if flag in values and not isinstance(values[flag], bool):
            raise SettingsError(f"{flag} must be true or false, got {values[flag]!r}", flag)
    if values.get("prefetch_batches", 2) > values.get("max_in_flight_batches", 8):
        raise SettingsError(
            "prefetch_batches cannot exceed max_in_flight_batches (prefetched batches are in "
            "flight)",
            "prefetch_batches",
        )
    return SplitSettings(**values, loader=parse_loader(loader))


def parse_loader(loader: Any) -> LoaderShare:
    if loader is None:
        return LoaderShare()
    if not isinstance(loader, dict):
        raise SettingsError(
            "loader must be an object {cpu_cores, memory, nodes}, e.g. "
            '{"cpu_cores": 2, "memory": 1}',
            "loader",
        )
    try:
        values = parse_knobs(loader, LOADER_RULES, ("cpu_cores", "memory", "nodes"))
    except SettingsError as error:
        raise SettingsError(f"loader: {error}", "loader") from None
    if values.get("cpu_cores", 1.0) < 0.1:
        raise SettingsError("loader: cpu_cores must be at least 0.1", "loader")
    if values.get("memory", 1.0) < MEMORY_PER_PROCESS_GB:
        raise SettingsError(
            f"loader: memory must be at least {MEMORY_PER_PROCESS_GB:g} GB (a loader process)",
            "loader",
        )
    return LoaderShare(**values)


PARTS = ("all", "train", "validation")  # the sides of the training split a job may name
LIMITED_BY_DATA = 0.25  # a trainer that waits for data more than this is data-bound


class SplitRules(StrategyRules):
    name = "split"
    # Text-to-text models are validated and used for inference here; they train with fedavg.
    model_types = frozenset({"classifier", "simple_transformer", "text_to_text"})
    tasks = frozenset({"train", "validate", "infer"})  # and AUDIT_TASK, the gateway's own
    progress_unit = "step"

    def parse_settings(self, training: dict[str, Any]) -> SplitSettings:
        return parse_split_settings(training)

    def check_job(self, job: JobRequest, settings: SplitSettings) -> None:
        if job.model.model_type == "text_to_text" and job.task == "train":
            raise SettingsError(
                "split trains classifier and simple_transformer models; train text_to_text "
                "models with fedavg (split can validate and infer with them)",
                "strategy",
            )
        if job.num_workers not in (None, 1):
            raise SettingsError(
                "split runs one trainer; give the data stage more loaders with loader.nodes "
                "or loader.cpu_cores",
                "num_workers",
            )
        data = job.data
        if data.data_source != "huggingface" and data.split not in (None, *PARTS):
            raise SettingsError(
                f"data_config.split must be one of {', '.join(PARTS)} for {data.data_source} "
                "data (a side of the training split)",
                "split",
            )

    def extra_shares(self, job: JobRequest, settings: SplitSettings) -> tuple[ExtraShare, ...]:
        loader = settings.loader
        return (ExtraShare("loader", 0, loader.cpu_cores, loader.memory, loader.nodes),)

    def total_steps(self, settings: SplitSettings) -> int | None:
        return settings.max_steps if not settings.epochs else None

    def progress_note(self, values: dict[str, Any]) -> str | None:
        wait = values.get("data_wait_fraction")
        if not isinstance(wait, int | float):
            return None
        if wait > LIMITED_BY_DATA:
            return f"trainer waits for data {wait:.0%} of the time: more loader CPU would help"
        return f"trainer waits for data {wait:.0%} of the time: the trainer is the limit"
