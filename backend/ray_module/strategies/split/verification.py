"""Verified credit for split training: a sample of each loader node's batches is made again
on the trainer's node, which also runs the job's driver, and must be the same.

A batch is fixed by the job's seed: its sample ids by the epoch's plan, its augmentation by
(seed, epoch, batch), its tokens by the tokenizer. The trainer builds its own loader (no
output capture) the first time it checks one, draws each batch for a check at its node's
rate (``protocol.trust``), and compares every array exactly (float arrays to 1e-6). Training,
validation and the batches of validate and infer jobs are all checked. A batch that differs
is a verdict against its loader node; the trainer uses the batch as it should have been, so
the model is never trained or scored on what the loader made up, and that node's batches
are checked every time from then on (its streak is reset).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from protocol.events import VerdictEvent
from protocol.run import WorkerPlan
from protocol.trust import check_rate_for
from ray_module.strategies.verification import chosen_for_check

NOT_DATA = {"node_id", "cpu_s", "wall_s", "nbytes"}  # a batch's own figures, not its data
PARTS = {"train": 0, "validation": 1, "task": 2}


def batch_difference(claimed: dict[str, Any], truth: dict[str, Any]) -> str:
    """What differs between a loader's batch and the one made again ('' when none)."""
    for name in sorted(k for k in truth if k not in NOT_DATA):
        expected, got = np.asarray(truth[name]), claimed.get(name)
        if got is None:
            return f"{name} is missing"
        got = np.asarray(got)
        if got.shape != expected.shape:
            return f"{name} has shape {got.shape}, not {expected.shape}"
        if np.issubdtype(expected.dtype, np.floating):
            if not np.allclose(got, expected, rtol=1e-6, atol=1e-6):
                gap = float(np.max(np.abs(got.astype(np.float64) - expected)))
                return f"{name} differs by up to {gap:.3g}"
        elif not np.array_equal(got, expected):
            return f"{name} differs in {int(np.sum(got != expected))} values"
    return ""


class LoaderChecker:
    """Checks sampled batches as the trainer receives them. ``replayer`` builds the trainer's
    own ``BatchLoader``; ``emit`` sends a verdict to the runner."""

    def __init__(
        self,
        seed: int,
        trainer_node: int,
        loaders: tuple[WorkerPlan, ...],
        replayer: Callable[[], Any],
        emit: Callable[[VerdictEvent], None],
    ) -> None:
        self.seed = seed
        self.trainer_node = trainer_node
        self.streaks = {plan.node_id: plan.valid_streak for plan in loaders}
        self._make_replayer = replayer
        self._replayer: Any | None = None
        self.emit = emit

    def prepare(self) -> None:
        """Build the replaying loader now (it reads the data and warms its augmentation)
        when another node's batches will be checked: at the trainer's start, beside the
        loaders' own, not while the trainer waits on its first check. A failure to load is
        raised at that first check, as before."""
        if self._replayer is None and any(node != self.trainer_node for node in self.streaks):
            self._replayer = self._make_replayer()

    def replayer(self) -> Any:
        if self._replayer is None:
            self._replayer = self._make_replayer()
        self._replayer.check_started()
        return self._replayer

    def checked(
        self,
        step: int,
        key: tuple[str, int, int],
        ids: np.ndarray,
        augment: bool,
        batch: dict,
    ) -> dict:
        """The batch to use (train on, score, predict): ``batch`` itself, or, where it was
        checked and differed, the batch as it should have been. ``key``: (part, epoch,
        index), the batch's place in the job."""
        part, epoch, index = key
        node = int(batch["node_id"])
        if node == self.trainer_node or node not in self.streaks:
            return batch  # the trainer's own node: made by the same party that checks it
        rate = check_rate_for(self.streaks[node])
        if not chosen_for_check(self.seed, step, node, rate, PARTS.get(part, 9), epoch, index):
            return batch
        truth = self.replayer().batch(epoch, index, ids, augment)
        difference = batch_difference(batch, truth)
        if not difference:
            self.streaks[node] += 1
            self.emit(VerdictEvent(node, step, True, len(ids), self.trainer_node))
            return batch
        self.streaks[node] = 0
        detail = f"{part} batch {index} of epoch {epoch}: {difference}"
        self.emit(VerdictEvent(node, step, False, len(ids), self.trainer_node, detail))
        return {**truth, "node_id": node, "cpu_s": 0.0, "wall_s": 0.0, "nbytes": batch["nbytes"]}
