"""Verified credit for FedAvg: a sampled client's local update, recomputed on another owner's
host from the round's global weights, the client's shard and its seed, before the round
averages it.

A client's shard and its shuffling are fixed by the job's seed, so an honest replay repeats
the same training; what differs is float rounding (thread counts, CPUs). The update (new
weights minus the global ones) must lie within ``UPDATE_BAND`` of the replay's, relative to
the replay's size. The band was calibrated from honest replays on this project's 2-core CI
machine, of the digits MLP and the tiny T5 trained with 1 thread and replayed with 1, 2 and
4 (tests/ray_module/strategies/fedavg/test_verification.py): gaps of 0 (MLP) and 0 to 7.8e-8
(T5), kept at a tenth of the band or less so other CPUs have room; not yet calibrated on GPUs
(where kernels may not be deterministic). An untrained client's gap is 1.0, a noised one's
far above the band.
Where the two disagree the runner trains the client itself, as referee. With node-local data
no other host holds the client's data: nothing is replayed (no verdict).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from protocol.events import VerdictEvent
from ray_module.strategies.verification import Referee, chosen_for_check, validator_for

UPDATE_BAND = 1e-3
REPLAY_TIMEOUT_S = 600.0

Weights = list[np.ndarray]


def update_gap(global_weights: Weights, claimed: Weights, replayed: Weights) -> float:
    """|claimed update - replayed update| / |replayed update| (inf for a wrong shape)."""
    if len(claimed) != len(replayed) or any(
        np.shape(c) != np.shape(r) for c, r in zip(claimed, replayed, strict=True)
    ):
        return float("inf")
    difference = sum(
        float(np.sum((np.asarray(c, np.float64) - np.asarray(r, np.float64)) ** 2))
        for c, r in zip(claimed, replayed, strict=True)
    )
    size = sum(
        float(np.sum((np.asarray(r, np.float64) - np.asarray(g, np.float64)) ** 2))
        for r, g in zip(replayed, global_weights, strict=True)
    )
    return float(np.sqrt(difference) / max(np.sqrt(size), 1e-12))


class FedAvgVerifier:
    """Checks sampled answers of one round. ``referee`` builds, once, the runner's own
    ``ClientHost`` (all shards, no output capture), used only when a replay disagrees."""

    def __init__(self, seed: int, referee: Callable[[], Any]) -> None:
        self.seed = seed
        self.referee = Referee(referee)

    def check(
        self,
        round_number: int,
        weights: Weights,
        weights_ref: Any,
        answers: list[dict[str, Any]],
        host_of: dict[int, Any],
        hosts: list[Any],
    ) -> tuple[list[VerdictEvent], set[int]]:
        """Verdicts on the sampled answers, and the node ids whose work was found invalid."""
        import ray

        replays: dict[Any, tuple[dict[str, Any], Any, Any]] = {}
        for answer in answers:
            host = host_of[answer["client"]]
            if not chosen_for_check(self.seed, round_number, answer["client"], host.check_rate):
                continue
            validator = validator_for(host, hosts)
            if validator is None:
                continue
            ref = validator.handle.replay_fit.remote(answer["client"], round_number, weights_ref)
            replays[ref] = (answer, host, validator)
        if not replays:
            return [], set()
        done, _ = ray.wait(list(replays), num_returns=len(replays), timeout=REPLAY_TIMEOUT_S)
        verdicts: list[VerdictEvent] = []
        invalid: set[int] = set()
        for ref in done:
            answer, host, validator = replays[ref]
            try:
                replayed = ray.get(ref)["weights"]
            except ray.exceptions.RayError:
                continue  # the validator is gone: no verdict this time
            verdicts.extend(
                self.judge(round_number, weights, answer, replayed, host, validator, invalid)
            )
        return verdicts, invalid

    def judge(
        self,
        round_number: int,
        weights: Weights,
        answer: dict[str, Any],
        replayed: Weights,
        host: Any,
        validator: Any,
        invalid: set[int],
    ) -> list[VerdictEvent]:
        client = answer["client"]

        def verdict(node: Any, by_node: int, valid: bool, detail: str = "") -> VerdictEvent:
            node.count_result(valid)
            if not valid:
                invalid.add(node.node_id)
            return VerdictEvent(node.node_id, round_number, valid, 1, by_node, detail)

        gap = update_gap(weights, answer["weights"], replayed)
        if gap <= UPDATE_BAND:
            return [verdict(host, validator.node_id, True)]
        truth = self.referee.get().replay_fit(client, round_number, weights)["weights"]
        claimed_gap = update_gap(weights, answer["weights"], truth)
        if update_gap(weights, replayed, truth) <= UPDATE_BAND:
            detail = f"client {client}'s update is {claimed_gap:.3g} away from a replay's"
            return [verdict(host, validator.node_id, False, detail)]
        if claimed_gap <= UPDATE_BAND:
            detail = f"its replay of client {client} is {gap:.3g} away from the update"
            return [verdict(host, 0, True), verdict(validator, 0, False, detail)]
        detail = f"client {client}'s update is {claimed_gap:.3g} away from the runner's replay"
        return [verdict(host, 0, False, detail)]
