"""Verified credit for split training, without Ray: the trainer makes a sampled batch again
with its own loader (the seeded augmentation included) and it is the loader's to the bit; a
batch of noise is caught, reported against its loader node, and replaced by the true batch;
the node is then checked at every batch."""

from __future__ import annotations

import numpy as np

from protocol.run import DataRequest, ModelRequest, WorkerPlan
from ray_module.strategies.split.loader import LABELLED, BatchLoader, LoaderConfig
from ray_module.strategies.split.samples import EpochPlan
from ray_module.strategies.split.verification import LoaderChecker, batch_difference

DIGITS = DataRequest("builtin", "digits", max_samples=300)


def loader(node_id: int) -> BatchLoader:
    built = BatchLoader(
        LoaderConfig(node_id, LABELLED, DIGITS, ModelRequest("classifier", "mlp"), seed=5)
    )
    built.check_started()
    return built


def test_a_batch_made_again_elsewhere_is_the_same_and_noise_is_caught_and_replaced() -> None:
    node_loader, verdicts = loader(2), []
    plan = EpochPlan(np.arange(300), 32, True, 5)
    trusted = WorkerPlan(3, 0, 1, 1, role="loader", valid_streak=1000)  # checked 5% of batches
    checker = LoaderChecker(
        5, 1, (WorkerPlan(2, 0, 1, 1, role="loader"), trusted), lambda: loader(1), verdicts.append
    )
    ids = plan.batch(1, 3, plan.order(1))
    honest = node_loader.batch(1, 3, ids, augment=True)
    assert batch_difference(honest, loader(1).batch(1, 3, ids, augment=True)) == ""
    assert checker.checked(1, ("train", 1, 3), ids, True, honest) is honest
    assert [(v.node_id, v.valid, v.validator_node_id, v.checked) for v in verdicts] == [
        (2, True, 1, 32)
    ]

    rng = np.random.default_rng(0)
    noise = {**honest, "features": rng.normal(size=honest["features"].shape).astype(np.float32)}
    used = checker.checked(2, ("train", 1, 3), ids, True, noise)
    assert not verdicts[-1].valid and verdicts[-1].node_id == 2
    assert (
        "features differs" in verdicts[-1].detail
        and "train batch 3 of epoch 1" in verdicts[-1].detail
    )
    assert batch_difference(used, honest) == ""  # trained on the true batch, not the noise
    assert checker.streaks[2] == 0  # checked at every batch from now on
    shuffled = {**honest, "labels": honest["labels"][::-1].copy()}
    assert "labels differs" in batch_difference(shuffled, honest)

    # A trusted node's batches are checked only now and then; the trainer's own never.
    checked_before = len(verdicts)
    for step in range(3, 43):
        checker.checked(step, ("train", 1, 3), ids, True, {**honest, "node_id": 3})
        checker.checked(step, ("train", 1, 3), ids, True, {**honest, "node_id": 1})
    assert 0 < len(verdicts) - checked_before < 10
