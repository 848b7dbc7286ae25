"""The ``training_config`` knobs of strategy ``es``, checked once (at submit and in the run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from protocol.run import JobRequest
from protocol.strategies.knobs import KnobRules, parse_knobs
from protocol.strategies.rules import StrategyRules, slots_of

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class ESSettings:
    steps: int = 100
    population: int | None = 64  # antithetic pairs per step, shared by the live workers
    time_per_step_s: float | None = None  # if set: each worker evaluates pairs for this long
    sigma: float = 0.02
    learning_rate: float = 0.03
    optimizer: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    batch_size: int = 16
    seq_len: int = 64
    new_tokens_interval: int = 1  # a fresh text batch every N steps
    validation_interval: int = 10
    checkpoint_interval: int = 10
    step_timeout_s: float = 120.0  # a worker that has not answered by then is left out
    hidden_size: int | None = None
    num_layers: int | None = None
    seed: int = 0
    sample_length: int = 80

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RULES = KnobRules(
    strategy="es",
    ints={
        "steps": (1, 1_000_000),
        "population": (1, 1_000_000),
        "batch_size": (1, 4096),
        "seq_len": (2, 4096),
        "new_tokens_interval": (1, 1_000_000),
        "validation_interval": (1, 1_000_000),
        "checkpoint_interval": (1, 1_000_000),
        "hidden_size": (1, 4096),
        "num_layers": (1, 16),
        "seed": (0, 2**31 - 1),
        "sample_length": (1, 10_000),
    },
    positive={
        "time_per_step_s": (0.0, 3600.0),
        "sigma": (0.0, 10.0),
        "learning_rate": (0.0, 10.0),
        "beta1": (0.0, 0.999999),
        "beta2": (0.0, 0.999999),
        "step_timeout_s": (0.0, 24 * 3600.0),
    },
    non_negative={"momentum": (0.0, 0.999999), "weight_decay": (0.0, 10.0)},
    choices={"optimizer": OPTIMIZERS},
    elsewhere={"epochs": "steps", "max_steps": "steps", "rounds": "steps"},
)


def parse_es_settings(training: dict[str, Any]) -> ESSettings:
    values = parse_knobs(training, RULES, (f.name for f in fields(ESSettings)))
    if "time_per_step_s" in values and "population" not in values:
        values["population"] = None  # the time budget decides how many pairs
    return ESSettings(**values)


class ESRules(StrategyRules):
    name = "es"
    model_types = frozenset({"char_rnn"})
    default_for = frozenset({"char_rnn"})
    progress_unit = "step"

    def parse_settings(self, training: dict[str, Any]) -> ESSettings:
        return parse_es_settings(training)

    def worker_count(self, job: JobRequest, settings: ESSettings) -> int:
        """ES scales with evaluators: one per whole core (or GPU)."""
        return job.num_workers or slots_of(job)

    def total_steps(self, settings: ESSettings) -> int:
        return settings.steps
