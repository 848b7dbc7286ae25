"""The ``training_config`` knobs of strategy ``data_parallel``, checked once (at submit and
in the run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from protocol.strategies.knobs import KnobRules, parse_knobs, run_length
from protocol.strategies.rules import StrategyRules


@dataclass(frozen=True)
class DataParallelSettings:
    epochs: int | None = None  # with max_steps alone: as many epochs as it takes
    max_steps: int | None = None  # neither: one epoch
    batch_size: int = 8
    learning_rate: float = 5e-4
    seq_len: int = 64
    validation_split: float = 0.1  # data_config.validation_split wins when set
    checkpoint_interval: int | None = None  # None: once per epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def total_steps(self, batches_per_epoch: int) -> int:
        return run_length(self.epochs, self.max_steps, batches_per_epoch, default_epochs=1)


RULES = KnobRules(
    strategy="data_parallel",
    ints={
        "epochs": (1, 10_000),
        "max_steps": (1, 10_000_000),
        "batch_size": (1, 65_536),
        "seq_len": (2, 65_536),
        "checkpoint_interval": (1, 10_000_000),
    },
    positive={"learning_rate": (0.0, 10.0), "validation_split": (0.0, 0.9)},
    elsewhere={
        "rounds": "epochs or max_steps",
        "steps": "max_steps",
        "local_epochs": "epochs",
        "clients": "num_workers",
    },
)


def parse_data_parallel_settings(training: dict[str, Any]) -> DataParallelSettings:
    return DataParallelSettings(
        **parse_knobs(training, RULES, (f.name for f in fields(DataParallelSettings)))
    )


class DataParallelRules(StrategyRules):
    name = "data_parallel"
    model_types = frozenset({"simple_transformer"})
    default_for = frozenset({"simple_transformer"})
    progress_unit = "step"

    def parse_settings(self, training: dict[str, Any]) -> DataParallelSettings:
        return parse_data_parallel_settings(training)

    def total_steps(self, settings: DataParallelSettings) -> int | None:
        # Epochs become steps only once the data is loaded; max_steps is known upfront.
        return settings.max_steps if not settings.epochs else None
