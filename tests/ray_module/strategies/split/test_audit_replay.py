"""What an audit of split's trainer relies on: training the steps after a checkpoint again,
from that checkpoint, on another machine's threads, gives the losses the trainer had, far
inside the audit's tolerance; training that skipped an update gives losses far outside it.
In one process, without Ray: the real model, loader, optimizer and per-step seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compute.audits.lifecycle import AUDIT_RELATIVE
from protocol.run import DataRequest, ModelRequest
from ray_module.models.contract import DataFit
from ray_module.strategies.split.loader import LABELLED, BatchLoader, LoaderConfig
from ray_module.strategies.split.samples import EpochPlan
from ray_module.strategies.split.worker import step_seed

SEED = 5
MODEL = ModelRequest("classifier", "mlp")
STEPS = 24  # after the checkpoint, as many as an audit window


def digits_loader() -> BatchLoader:
    loader = BatchLoader(
        LoaderConfig(1, LABELLED, DataRequest("builtin", "digits"), MODEL, seed=SEED)
    )
    loader.check_started()
    return loader


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    loader = digits_loader()
    plan = EpochPlan(np.arange(loader.describe().size), 32, True, SEED)
    order = plan.order(0)
    return [loader.batch(0, i, plan.batch(0, i, order), augment=True) for i in range(STEPS + 4)]


def trained(batches: list[dict], threads: int, *, skip: int | None = None) -> list[float]:
    """The losses of steps 5.. after four steps and a checkpoint (weights and optimizer
    state through numpy, as a checkpoint holds them), on ``threads`` threads."""
    import torch

    from ray_module.models.registry import load_model

    def fresh():  # type: ignore[no-untyped-def]
        shape = digits_loader().describe()
        fit = DataFit(tuple(shape.input_shape), shape.num_classes, tuple(shape.class_names))
        model = load_model(MODEL, fit=fit, seed=SEED, device=torch.device("cpu"))
        return model, torch.optim.AdamW(model.network.parameters(), lr=3e-3)

    def step(model, optimizer, number: int, batch: dict, update: bool = True) -> float:  # type: ignore[no-untyped-def]
        torch.manual_seed(step_seed(SEED, number))
        loss = model.loss(model.batch(batch))
        optimizer.zero_grad()
        loss.backward()
        if update:
            optimizer.step()
        return float(loss.detach())

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, optimizer = fresh()
        for number in range(1, 5):
            step(model, optimizer, number, batches[number - 1])
        weights = {k: v.detach().numpy().copy() for k, v in model.network.state_dict().items()}
        state = optimizer.state_dict()
        model, optimizer = fresh()  # the checkpoint, loaded elsewhere
        model.network.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        optimizer.load_state_dict(state)
        return [
            step(model, optimizer, number, batches[number - 1], update=number != skip)
            for number in range(5, STEPS + 5)
        ]
    finally:
        torch.set_num_threads(previous)


def within_audit(claimed: list[float], replayed: list[float]) -> bool:
    return all(
        math.isclose(c, r, rel_tol=AUDIT_RELATIVE, abs_tol=1e-5)
        for c, r in zip(claimed, replayed, strict=True)
    )


def test_the_steps_after_a_checkpoint_trained_again_on_other_threads_give_the_same_losses(
    batches: list[dict],
) -> None:
    claimed, again = trained(batches, 1), trained(batches, 2)
    gaps = [abs(c - r) / abs(r) for c, r in zip(claimed, again, strict=True)]
    assert max(gaps) < AUDIT_RELATIVE / 100, gaps  # two orders of magnitude of room
    assert within_audit(claimed, again)
    # An update skipped at step 10: every loss after it is another model's.
    skipped = trained(batches, 1, skip=10)
    assert skipped[:6] == claimed[:6]
    assert not within_audit(skipped, again)
    assert sum(not math.isclose(s, r, rel_tol=AUDIT_RELATIVE)
               for s, r in zip(skipped[6:], again[6:], strict=True)) >= 10  # fmt: skip
