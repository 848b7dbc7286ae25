"""Strategy ``data_parallel``: Hugging Face causal-LM fine-tuning on Ray Train, one worker
per planned slot (``num_workers``, else one), gradients all-reduced every step."""

from __future__ import annotations

from protocol.run import RunConfig
from protocol.strategies.data_parallel import DataParallelRules
from ray_module.contract import RunContext
from ray_module.strategies.base import TrainingStrategy


class DataParallelStrategy(DataParallelRules, TrainingStrategy):
    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.data_parallel.run import run_data_parallel

        run_data_parallel(config, context)
