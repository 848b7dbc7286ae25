"""Strategy ``es``: evolution strategies (a char-RNN language model) over evaluator actors."""

from __future__ import annotations

from protocol.run import RunConfig
from protocol.strategies.es import ESRules
from ray_module.contract import RunContext
from ray_module.strategies.base import TrainingStrategy


class ESStrategy(ESRules, TrainingStrategy):
    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.es.run import run_es

        run_es(config, context)
