"""Strategy ``es``: evolution strategies (a char-RNN language model) over evaluator actors."""

from __future__ import annotations

from typing import Any

from protocol.run import RunConfig
from protocol.strategies.es import ESSettings, parse_es_settings
from ray_module.contract import RunContext
from ray_module.strategies.base import SubmittedJob, TrainingStrategy, slots_of


class ESStrategy(TrainingStrategy):
    name = "es"
    model_types = frozenset({"char_rnn"})
    default_for = frozenset({"char_rnn"})
    progress_unit = "step"

    def parse_settings(self, training: dict[str, Any]) -> ESSettings:
        return parse_es_settings(training)

    def worker_count(self, job: SubmittedJob, settings: ESSettings) -> int:
        """ES scales with evaluators: one per whole core (or GPU)."""
        return job.num_workers or slots_of(job)

    def total_steps(self, settings: ESSettings) -> int:
        return settings.steps

    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.es.run import run_es

        run_es(config, context)
