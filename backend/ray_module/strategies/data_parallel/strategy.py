"""Strategy ``data_parallel``: Hugging Face causal-LM fine-tuning on Ray Train, one worker
per planned slot (``num_workers``, else one), gradients all-reduced every step."""

from __future__ import annotations

from typing import Any

from protocol.run import RunConfig
from protocol.strategies.data_parallel import (
    DataParallelSettings,
    parse_data_parallel_settings,
)
from ray_module.contract import RunContext
from ray_module.strategies.base import TrainingStrategy


class DataParallelStrategy(TrainingStrategy):
    name = "data_parallel"
    model_types = frozenset({"simple_transformer"})
    default_for = frozenset({"simple_transformer"})
    progress_unit = "step"

    def parse_settings(self, training: dict[str, Any]) -> DataParallelSettings:
        return parse_data_parallel_settings(training)

    def total_steps(self, settings: DataParallelSettings) -> int | None:
        # Epochs become steps only once the data is loaded; max_steps is known upfront.
        return settings.max_steps if not settings.epochs else None

    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.data_parallel.run import run_data_parallel

        run_data_parallel(config, context)
