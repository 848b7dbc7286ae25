"""Verified credit for ES, without Ray: two nodes' evaluators (each built from the job's seed
on its own) give the same losses for the same pairs, a made-up answer is told apart from an
honest replay, the runner's referee settles a dispute either way, and checks are drawn at
each node's rate."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.run import DataRequest, ModelRequest
from protocol.strategies.es import parse_es_settings
from protocol.trust import check_rate_for
from ray_module.models.char_rnn import flat_parameters
from ray_module.strategies.es.evaluator import ESEvaluator
from ray_module.strategies.es.noise import pair_index
from ray_module.strategies.es.server import Worker
from ray_module.strategies.es.verification import (
    Dispute,
    Verifier,
    agree,
    sampled_positions,
    share_check_rate,
)
from ray_module.strategies.es.worker_config import WorkerConfig
from ray_module.strategies.verification import chosen_for_check, validator_for

SETTINGS = parse_es_settings({"steps": 3, "population": 4, "batch_size": 4, "seq_len": 16,
                              "hidden_size": 16, "seed": 7})  # fmt: skip


def evaluator(node_id: int) -> ESEvaluator:
    return ESEvaluator(
        WorkerConfig(
            job_id=1,
            rank=node_id - 1,
            node_id=node_id,
            gpu=0,
            cpu_cores=1,
            memory_gb=1,
            model=ModelRequest("char_rnn", "rnn"),
            data=DataRequest("builtin", "stdlib-text", max_samples=100),
            settings=SETTINGS,
        )
    )


@pytest.fixture(scope="module")
def nodes() -> tuple[ESEvaluator, ESEvaluator, ESEvaluator]:
    return evaluator(1), evaluator(2), evaluator(3)


def Member(node_id: int, rank: int, **trust: int) -> Worker:
    """A worker as the verifier sees it (no actor behind it: nothing is asked of it)."""
    return Worker(None, node_id, 0, 1.0, 1.0, rank=rank, **trust)


def test_two_nodes_replaying_the_same_pairs_agree_and_made_up_losses_do_not(nodes) -> None:
    one, two, _ = nodes
    theta = flat_parameters(one.model)
    indices = [pair_index(3, 0, k) for k in range(2)]
    honest = one.replay(theta, 2, indices)
    assert honest.shape == (2, 2)
    assert agree(honest, two.replay(theta, 2, indices))
    made_up = honest.mean() * np.ones_like(honest)  # plausible numbers, no work done
    assert not agree(made_up, two.replay(theta, 2, indices))
    # Another batch or other weights give other losses: a replay checks this very work.
    assert not agree(honest, two.replay(theta, 3, indices))
    assert not agree(honest, two.replay(theta * 1.01, 2, indices))


def test_the_runners_referee_settles_a_dispute_against_whichever_side_lied(nodes) -> None:
    one, two, referee = nodes
    theta = flat_parameters(one.model)
    indices = [pair_index(1, 0, 0), pair_index(1, 0, 1)]
    truth = one.replay(theta, 0, indices)
    checked, validator = Member(1, 0, owner_id=10), Member(2, 1, owner_id=20)
    verifier = Verifier(SETTINGS.seed, lambda: referee)

    def judge(claimed: np.ndarray, replayed: np.ndarray) -> list:
        dispute = Dispute(checked, validator, indices, claimed, replayed)
        return verifier.judge(1, theta, 0, dispute, set())

    # Honest both: one valid verdict on the checked node, replayed by the validator.
    [valid] = judge(truth, two.replay(theta, 0, indices))
    assert (valid.node_id, valid.valid, valid.validator_node_id, valid.checked) == (1, True, 2, 4)
    assert checked.valid_streak == 1  # counted on within the job: checked less often as it holds
    # The checked node made its losses up: invalid, with the gap in words; back to probation.
    [cheat] = judge(truth + 0.5, two.replay(theta, 0, indices))
    assert (cheat.node_id, cheat.valid) == (1, False) and "largest gap 0.5" in cheat.detail
    assert checked.valid_streak == 0 and checked.check_rate == 1.0
    # The validator lied about its replay: the checked node's work holds, the validator's not.
    honest, liar = judge(truth, truth * 0.9)
    assert (honest.node_id, honest.valid, liar.node_id, liar.valid) == (1, True, 2, False)
    assert liar.validator_node_id == 0 and "its replay differs" in liar.detail


def test_checks_are_drawn_at_each_nodes_rate_and_validators_come_from_other_owners() -> None:
    # New: every result; trusted after 5 valid in a row, then ever less often, to a floor.
    assert [check_rate_for(s) for s in (0, 4, 5, 10, 50, 1000)] == [1, 1, 1, 0.5, 0.1, 0.05]
    assert all(chosen_for_check(7, step, 0, 1.0) for step in range(100))
    drawn = sum(chosen_for_check(7, step, 0, 0.1) for step in range(2000))
    assert 150 < drawn < 250  # about a tenth
    assert chosen_for_check(7, 5, 1, 0.3) == chosen_for_check(7, 5, 1, 0.3)  # same on resume
    assert len(set(sampled_positions(7, 3, 0, 8))) == 2 and sampled_positions(7, 3, 0, 1) == [0]
    # A node dealt three times the mean share of a step's pairs is checked three times as
    # often (so a fast-seeming liar is caught as soon per pair); a small share keeps its rate.
    assert share_check_rate(0.05, count=30, mean_count=10) == pytest.approx(0.15)
    assert share_check_rate(0.5, count=40, mean_count=10) == 1.0
    assert share_check_rate(0.1, count=5, mean_count=10) == 0.1
    assert share_check_rate(1.0, count=2, mean_count=10) == 1.0  # new: every step

    mine = Member(1, 0, owner_id=10)
    same_owner = Member(2, 1, owner_id=10, valid_streak=100)  # checked 5% of the time
    other_new, other_trusted = Member(3, 2, owner_id=20), Member(4, 3, owner_id=30, valid_streak=50)
    assert validator_for(mine, [mine, same_owner, other_new, other_trusted]) is other_trusted
    assert validator_for(mine, [mine, same_owner]) is same_owner  # no other owner: another node
    other_trusted.late = ["an answer that missed its deadline"]  # busy: it would stall
    assert validator_for(mine, [mine, same_owner, other_new, other_trusted]) is other_new
    other_trusted.alive = other_new.alive = same_owner.alive = False
    assert validator_for(mine, [mine, same_owner, other_new, other_trusted]) is None
