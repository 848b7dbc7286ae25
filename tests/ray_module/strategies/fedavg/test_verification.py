"""Verified credit for FedAvg, without Ray: a client's update trained on another host (its
shard and shuffling from the job's seed) matches the claimed one within the band, whatever
each host's thread count; an untrained or noisy update does not; the runner's referee
settles a dispute either way."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.run import DataRequest, ModelRequest
from protocol.strategies.fedavg import parse_fedavg_settings
from ray_module.strategies.fedavg.client import ClientHost, HostConfig
from ray_module.strategies.fedavg.server import Host
from ray_module.strategies.fedavg.verification import UPDATE_BAND, FedAvgVerifier, update_gap

CASES = {
    "mlp": (ModelRequest("classifier", "mlp"), DataRequest("builtin", "digits", max_samples=400)),
    "tiny-t5": (
        ModelRequest("text_to_text", "tiny-t5"),
        DataRequest("builtin", "synthetic-t2t", max_samples=64),
    ),
}


def host(case: str, node_id: int, clients: tuple[int, ...], threads: int) -> ClientHost:
    model, data = CASES[case]
    settings = parse_fedavg_settings({"clients": 2, "rounds": 2, "local_epochs": 1, "seed": 3})
    built = ClientHost(
        HostConfig(1, node_id, 0, threads, 1, clients, model, data, settings, referee=True)
    )
    built.check_started()
    return built


def Member(node_id: int, **trust: int) -> Host:
    """A client host as the verifier sees it (no actor behind it)."""
    return Host(None, node_id, 0, 1.0, 1.0, **trust)


@pytest.mark.parametrize("case", ["mlp", "tiny-t5"])
def test_an_honest_replay_on_another_host_falls_within_the_band_whatever_its_threads(
    case: str,
) -> None:
    import torch

    one = host(case, 1, (0,), threads=1)
    global_weights = one.initial_weights()
    claimed = one.fit(0, 1, global_weights)["weights"]
    gaps = []
    for threads in (2, 4):
        other = host(case, 2, (1,), threads=threads)
        gaps.append(
            update_gap(global_weights, claimed, other.replay_fit(0, 1, global_weights)["weights"])
        )
    torch.set_num_threads(1)
    assert max(gaps) <= UPDATE_BAND / 10, gaps  # a tenth of the band: room for other CPUs
    # Untrained (the global weights sent back), or trained a little then noised: far out.
    assert update_gap(global_weights, global_weights, claimed) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = [w + rng.normal(0, 1e-3, np.shape(w)).astype(w.dtype) for w in claimed]
    assert update_gap(global_weights, noisy, claimed) > 10 * UPDATE_BAND
    # Another round's shuffling is other work: a stale update does not pass either.
    assert (
        update_gap(global_weights, one.fit(0, 2, global_weights)["weights"], claimed) > UPDATE_BAND
    )


def test_the_referee_settles_a_fedavg_dispute_against_whichever_side_lied() -> None:
    one, two, referee = host("mlp", 1, (0,), 1), host("mlp", 2, (1,), 1), host("mlp", 0, (), 1)
    global_weights = one.initial_weights()
    honest = one.fit(0, 1, global_weights)
    checked, validator = Member(1, owner_id=10), Member(2, owner_id=20)
    verifier = FedAvgVerifier(3, lambda: referee)

    def judge(claimed: list, replayed: list) -> list:
        answer = {**honest, "weights": claimed}
        return verifier.judge(1, global_weights, answer, replayed, checked, validator, set())

    replay = two.replay_fit(0, 1, global_weights)["weights"]
    [valid] = judge(honest["weights"], replay)
    assert (valid.node_id, valid.valid, valid.validator_node_id) == (1, True, 2)
    [untrained] = judge(global_weights, replay)
    assert (untrained.node_id, untrained.valid) == (1, False)
    assert "client 0's update is 1 away" in untrained.detail
    held, liar = judge(honest["weights"], global_weights)  # the validator did not train
    assert (held.node_id, held.valid, liar.node_id, liar.valid) == (1, True, 2, False)
    with pytest.raises(ValueError, match="cannot be replayed"):
        host_local = host("mlp", 3, (0,), 1)
        host_local.every_shard = []  # node-local data: no other host holds it
        host_local.replay_fit(0, 1, global_weights)
