"""Verified credit for ES: a sample of each node's evaluations at a step is evaluated again on
another owner's node, before the step's update uses them.

ES is deterministic given its seeds: a pair's losses depend only on the weights, the
perturbation index (the shared noise table) and the step's batch (chosen by the seed), so an
honest replay matches to float rounding. A node is checked at a step with its ``check_rate``
(1.0 while new, down to a floor as its results hold: ``protocol.trust``); the check replays
``REPLAYED_PAIRS`` of its pairs on the most trusted live worker of another owner (another
node where no other owner's is live). When the two disagree the runner replays the same
pairs itself, as referee, and whichever side the referee contradicts is invalid: its answers
are left out of the step and its worker is stopped. A node with no other node to check it
gets no verdict (its credit is released at settlement, as before validation existed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.events import VerdictEvent
from ray_module.strategies.verification import (
    Referee,
    chosen_for_check,
    validator_for,
)
from ray_module.strategies.verification import losses_agree as agree

REPLAYED_PAIRS = 2
REPLAY_TIMEOUT_S = 120.0


def sampled_positions(seed: int, step: int, rank: int, count: int) -> list[int]:
    """Which of the answer's ``count`` pairs are replayed."""
    take = min(REPLAYED_PAIRS, count)
    rng = np.random.default_rng([seed, step, rank, 0x5A11])
    return sorted(int(i) for i in rng.choice(count, size=take, replace=False))


def share_check_rate(rate: float, count: int, mean_count: float) -> float:
    """How often an answer of ``count`` pairs is checked, its node's ``rate`` being for the
    mean share. A worker dealt more than the mean (a fast node, or one that only seems fast
    by making its losses up) is checked as much more often: a large share buys a
    make-believe worker no more of the update before it is caught. A smaller share keeps its
    node's rate (every step for a new node)."""
    return min(1.0, rate * max(1.0, count / max(mean_count, 1e-9)))


@dataclass
class Dispute:
    """One replay's outcome: who was checked, by whom, on which pairs, and the losses."""

    checked: Any
    validator: Any
    indices: list[int]
    claimed: np.ndarray
    replayed: np.ndarray | None  # None: the validator did not answer


class Verifier:
    """Checks sampled answers of one step. ``referee`` builds, once, the runner's own
    evaluator (``ESEvaluator``) used only when a replay disagrees."""

    def __init__(self, seed: int, referee: Callable[[], Any]) -> None:
        self.seed = seed
        self.referee = Referee(referee)

    def check(
        self,
        step: int,
        theta: np.ndarray,
        theta_ref: Any,
        batch_id: int,
        answers: list[dict[str, Any]],
        workers: list[Any],
    ) -> tuple[list[VerdictEvent], set[int]]:
        """Verdicts on the sampled answers, and the ranks whose work was found invalid."""
        import ray

        by_rank = {w.rank: w for w in workers}
        replays: dict[Any, Dispute] = {}
        mean_count = sum(len(a["indices"]) for a in answers) / len(answers)
        for answer in answers:
            checked = by_rank[answer["rank"]]
            count = len(answer["indices"])
            rate = share_check_rate(checked.check_rate, count, mean_count)
            if count == 0 or not chosen_for_check(self.seed, step, checked.rank, rate):
                continue
            validator = validator_for(checked, workers)
            if validator is None:
                continue
            positions = sampled_positions(self.seed, step, checked.rank, count)
            indices = [int(answer["indices"][p]) for p in positions]
            claimed = np.asarray(answer["losses"])[positions]
            ref = validator.handle.replay.remote(theta_ref, batch_id, indices)
            replays[ref] = Dispute(checked, validator, indices, claimed, None)
        if not replays:
            return [], set()
        done, _ = ray.wait(list(replays), num_returns=len(replays), timeout=REPLAY_TIMEOUT_S)
        verdicts: list[VerdictEvent] = []
        invalid: set[int] = set()
        for ref in done:
            dispute = replays[ref]
            try:
                dispute.replayed = ray.get(ref)["losses"]
            except ray.exceptions.RayError:
                continue  # the validator is gone: no verdict this time
            verdicts.extend(self.judge(step, theta, batch_id, dispute, invalid))
        return verdicts, invalid

    def judge(
        self, step: int, theta: np.ndarray, batch_id: int, dispute: Dispute, invalid: set[int]
    ) -> list[VerdictEvent]:
        checked, validator = dispute.checked, dispute.validator
        replayed = dispute.replayed
        assert replayed is not None
        pairs = len(dispute.indices)

        def verdict(node: Any, by_node: int, valid: bool, detail: str = "") -> VerdictEvent:
            node.count_result(valid)
            if not valid:
                invalid.add(node.rank)
            return VerdictEvent(node.node_id, step, valid, 2 * pairs, by_node, detail)

        if agree(dispute.claimed, replayed):
            return [verdict(checked, validator.node_id, True)]
        # They differ: the runner's own replay decides (validator_node_id 0 names the runner).
        truth = self.referee.get().replay(theta, batch_id, dispute.indices)
        if agree(replayed, truth):  # the validator was right: the checked node's losses are not
            detail = describe_difference(dispute.claimed, truth)
            return [verdict(checked, validator.node_id, False, f"its losses differ: {detail}")]
        if agree(dispute.claimed, truth):  # the checked node was right: the replay was not
            detail = describe_difference(replayed, truth)
            return [
                verdict(checked, 0, True),
                verdict(validator, 0, False, f"its replay differs: {detail}"),
            ]
        detail = describe_difference(dispute.claimed, truth)
        return [verdict(checked, 0, False, f"its losses differ: {detail}")]


def describe_difference(claimed: np.ndarray, truth: np.ndarray) -> str:
    claimed, truth = np.asarray(claimed, np.float64), np.asarray(truth, np.float64)
    if claimed.shape != truth.shape:
        return f"{claimed.size} losses where {truth.size} were expected"
    gap = float(np.max(np.abs(claimed - truth)))
    return f"largest gap {gap:.4g} in loss over {truth.size} replayed evaluations"
