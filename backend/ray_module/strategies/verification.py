"""What every mode's verified credit shares: whether a node's result is checked this time
(at its check rate, ``protocol.trust``) and which worker replays it (another owner's first).
Each mode's own module replays and compares (``es.verification``, ``fedavg.verification``,
``data_parallel.verification``); losses are compared with ``losses_agree``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def chosen_for_check(seed: int, step: int, rank: int, rate: float, *which: int) -> bool:
    """Whether ``rank``'s work at ``step`` (``which`` part of it, where a step has several)
    is checked: a draw the node cannot predict from its own answer (it is made after the
    answer arrives), the same on every resume."""
    if rate >= 1.0:
        return True
    return bool(np.random.default_rng([seed, step, rank, 0xC4EC, *which]).random() < rate)


# Losses replayed from the same code, weights and batch differ only by float rounding across
# CPUs (measured: under 1e-6 relative for ES, identical for data_parallel); made-up, skipped
# or untrained losses miss by far more.
RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 1e-5


def losses_agree(claimed: Any, replayed: Any) -> bool:
    """Whether claimed losses (a number or an array) are the replay's, to float rounding."""
    claimed, replayed = np.asarray(claimed, np.float64), np.asarray(replayed, np.float64)
    return claimed.shape == replayed.shape and bool(
        np.allclose(claimed, replayed, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE)
    )


def validator_for(checked: Any, workers: list[Any]) -> Any | None:
    """The live, free worker that replays ``checked``'s work: another owner's node first, then
    any other node; the most trusted (lowest check rate) first, then the lowest node id."""
    others = [
        w
        for w in workers
        if w.alive
        and not getattr(w, "late", None)  # still busy with a late answer: it would stall
        and w.node_id != checked.node_id
        and w is not checked
    ]
    if not others:
        return None

    def same_owner(worker: Any) -> bool:
        return checked.owner_id != 0 and worker.owner_id == checked.owner_id

    return min(others, key=lambda w: (same_owner(w), w.check_rate, w.node_id))


class Referee:
    """What the runner (or the trainer) does the disputed work with, built the first time it
    is needed: most jobs never build it."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._built: Any | None = None

    def get(self) -> Any:
        if self._built is None:
            self._built = self._build()
        return self._built
