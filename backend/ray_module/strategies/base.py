"""The strategy contract on the node side: a mode's rules (``protocol.strategies``) plus how
it runs (``run``, in the runner) and where a run left off (``checkpointed_step``)."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

from protocol.run import RunConfig
from protocol.strategies.rules import StrategyRules, slots_of
from ray_module.contract import RunContext
from ray_module.storage.checkpoints import saved_state

__all__ = ["CHECKPOINT_DIR", "TrainingStrategy", "slots_of"]

CHECKPOINT_DIR = "checkpoint"  # under the job's directory, for every strategy


class TrainingStrategy(StrategyRules):
    """A mode as its runner uses it: its rules' class first, then this one, e.g.
    ``class ESStrategy(ESRules, TrainingStrategy)``; one line in ``registry.STRATEGIES``."""

    def checkpointed_step(self, job_dir: Path) -> int | None:
        """The step of the job's last whole checkpoint (a resume starts after it)."""
        state = saved_state(job_dir / CHECKPOINT_DIR)
        if state is None or self.progress_unit not in state:
            return None
        return int(state[self.progress_unit])

    @abstractmethod
    def run(self, config: RunConfig, context: RunContext) -> None:
        """Run (or resume from the job's checkpoint) to the end, emitting metric, usage,
        checkpoint and artifact events through ``context``. Raise ``RetryableRunError`` when
        work was lost, ``FinalRunError`` when the job cannot succeed."""
