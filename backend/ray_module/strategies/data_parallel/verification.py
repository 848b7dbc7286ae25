"""Verified credit for data_parallel: at the first step after each checkpoint (and the first
step of an attempt), a sample of the ranks' claimed losses is recomputed by another owner's
rank from the same weights, before the step's update.

Every rank holds the same weights before a step's update (the checkpoint's, at the step after
one), its batch is fixed by the job's shuffle, and its dropout is seeded from (job, step,
rank): an honest replay repeats the same computation and differs only by float rounding. A
rank is checked with its node's ``check_rate`` (``protocol.trust``); its validator is the most
trusted rank of another owner's node (``strategies.verification.validator_for``). Where the two
disagree rank 0 replays the batch as referee: it shares its node with the job's driver, which
the gateway already trusts with the job's usage and verdicts. Whichever side the referee
contradicts is invalid, and the attempt stops: a rank's gradients are already summed into
everyone's (no rank's work can be left out of an all-reduce), so the job resumes from its last
checkpoint without the invalid node (the dispatcher leaves it out of the next placement).

What it checks is the loss a rank reports on its batch, not the gradients it sums in: those
are checked only as far as a made-up loss goes with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.events import VerdictEvent
from protocol.run import WorkerPlan
from protocol.trust import check_rate_for
from ray_module.strategies.verification import chosen_for_check, validator_for
from ray_module.strategies.verification import losses_agree as agree


def dropout_seed(job_seed: int, step: int, rank: int) -> int:
    """The seed of ``rank``'s random draws (dropout) at ``step``: a replay sets the same."""
    return int(np.random.SeedSequence([job_seed, step, rank, 0xD9]).generate_state(1)[0])


@dataclass(frozen=True)
class RankView:
    """What ``validator_for`` needs to know of a rank."""

    rank: int
    node_id: int
    owner_id: int
    check_rate: float
    alive: bool = True


def checks_at(job_seed: int, step: int, plans: Sequence[WorkerPlan]) -> dict[int, int]:
    """{checked rank: its validator's rank} at ``step``: the same on every rank."""
    views = [
        RankView(rank, plan.node_id, plan.owner_id, check_rate_for(plan.valid_streak))
        for rank, plan in enumerate(plans)
    ]
    checks: dict[int, int] = {}
    for view in views:
        if not chosen_for_check(job_seed, step, view.rank, view.check_rate):
            continue
        validator = validator_for(view, views)
        if validator is not None:
            checks[view.rank] = validator.rank
    return checks


@dataclass(frozen=True)
class Finding:
    rank: int
    valid: bool
    by_rank: int  # who decided: the validator, or rank 0 as referee
    detail: str = ""


def judge(
    checked: int, validator: int, claimed: float, replayed: float, referee: float | None
) -> list[Finding]:
    """The verdicts on one check; ``referee`` is rank 0's replay, made only on a dispute."""
    if agree(claimed, replayed):
        return [Finding(checked, True, validator)]
    if referee is None:
        raise ValueError("a disputed check needs the referee's replay")
    if agree(replayed, referee):
        detail = f"its loss {claimed:.6g} is {replayed:.6g} when replayed"
        return [Finding(checked, False, validator, detail)]
    if agree(claimed, referee):
        detail = f"its replay of rank {checked}'s loss {claimed:.6g} gave {replayed:.6g}"
        return [Finding(checked, True, 0), Finding(validator, False, 0, detail)]
    return [Finding(checked, False, 0, f"its loss {claimed:.6g} is {referee:.6g} when replayed")]


class StepChecker:
    """One rank's part in checking a step: every rank calls ``check`` at the same step (the
    exchange is collective), with its own claimed loss; ``replay(rank)`` recomputes that
    rank's loss at this step on this rank's weights.

    Each rank sends rank 0 its claim and its replays straight (a gather: no rank relays
    another's numbers, as in a ring all-reduce, where one could alter a third rank's claim or
    replay and frame it); rank 0 judges, replaying disputed batches itself, and returns the
    verdicts. The other ranks learn only whether to stop: rank 0 stops the attempt whatever
    they hear.

    ``deliver`` (rank 0's) receives the verdicts before the other ranks hear whether to stop:
    the first rank to fail its attempt ends it, so a verdict sent after the stop could be
    lost with it."""

    def __init__(
        self,
        rank: int,
        plans: Sequence[WorkerPlan],
        job_seed: int,
        deliver: Callable[[list[VerdictEvent]], None] | None = None,
    ) -> None:
        self.rank = rank
        self.plans = list(plans)
        self.job_seed = job_seed
        self.deliver = deliver

    def check(
        self, step: int, claimed: float, replay: Callable[[int], float]
    ) -> tuple[list[VerdictEvent], bool]:
        """Rank 0's verdicts (other ranks get none), and whether the attempt stops."""
        import torch
        import torch.distributed as dist

        world = len(self.plans)
        checks = checks_at(self.job_seed, step, self.plans)
        mine = torch.zeros(world + 1, dtype=torch.float64)  # [claim, replays by checked rank]
        mine[0] = claimed
        for checked, validator in checks.items():
            if validator == self.rank:
                mine[1 + checked] = replay(checked)
        received = [torch.zeros_like(mine) for _ in range(world)] if self.rank == 0 else None
        dist.gather(mine, received, dst=0)
        verdicts: list[VerdictEvent] = []
        if self.rank == 0:
            verdicts = self.judge_all(step, checks, received, replay)
            if verdicts and self.deliver is not None:
                self.deliver(verdicts)
        stop = torch.tensor([float(any(not v.valid for v in verdicts))])
        dist.broadcast(stop, src=0)
        return verdicts, bool(stop[0])

    def judge_all(
        self,
        step: int,
        checks: dict[int, int],
        received: list[Any],
        replay: Callable[[int], float],
    ) -> list[VerdictEvent]:
        verdicts = []
        for checked, validator in sorted(checks.items()):
            claimed = float(received[checked][0])
            replayed = float(received[validator][1 + checked])
            referee = None
            if not agree(claimed, replayed):  # rank 0's own replay decides
                referee = claimed if checked == 0 else replay(checked)
            for finding in judge(checked, validator, claimed, replayed, referee):
                verdicts.append(self.verdict(step, finding))
        return verdicts

    def verdict(self, step: int, finding: Finding) -> VerdictEvent:
        by = self.plans[finding.by_rank].node_id if finding.by_rank != finding.rank else 0
        return VerdictEvent(
            node_id=self.plans[finding.rank].node_id,
            step=step,
            valid=finding.valid,
            checked=1,
            validator_node_id=by,
            detail=f"rank {finding.rank}: {finding.detail}" if finding.detail else "",
        )
