"""Strategy ``split`` (seed 004): the data stage on CPU loader nodes (``training_config.loader``,
placed and priced beside the job's ``requirements``), the model on the trainer's node; tasks
``train``, ``validate`` and ``infer``."""

from __future__ import annotations

from protocol.run import RunConfig
from protocol.strategies.split import SplitRules
from ray_module.contract import RunContext
from ray_module.strategies.base import TrainingStrategy


class SplitStrategy(SplitRules, TrainingStrategy):
    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.split.run import run_split

        run_split(config, context)
