"""The ES server's steps over worker actors.

Each step: put the weights into the object store once; every live, free worker evaluates its
share of the population (or pairs for ``time_per_step_s``) on the step's batch and answers
with indices and losses; the server shapes the losses, rebuilds the gradient estimate from
the shared noise table and applies the optimizer once. A worker that dies or misses the
step's deadline is left out of that step only; the population adapts to who answered.

Why the server applies the update and broadcasts the new weights, rather than sending the
shaped scalars back so workers rebuild the update themselves (as the seed did): rebuilding
costs every worker the whole population's noise slices per step (pairs x parameters
multiply-adds), while the broadcast costs one ``ray.put`` of 4 bytes per parameter that each
node fetches once. For the model sizes here (10^4 to 10^6 parameters) the put is
milliseconds and the rebuild grows with the population; ``benchmarks/es.py`` prints both.
Upstream traffic is the same either way: scalars only.

With a fixed population the pairs of a step are numbered 0 to population - 1 and dealt to
the workers in contiguous runs, in proportion to each worker's speed as the server last saw
it (pairs per second from sending the step to its answer's arrival): nodes of unequal speed,
or one sharing its cores with other work, finish a step together instead of the fast ones
waiting for the slowest. The update depends only on which pairs were evaluated, never on who
evaluated them, so however a step is dealt it gives the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.events import VerdictEvent
from protocol.strategies.es import ESSettings
from protocol.trust import share_weight, weighted_split
from ray_module.errors import LostWorkersError, StartupError
from ray_module.strategies.actor_pool import (
    Credit,
    PoolMember,
    SharedWeights,
    ask_available,
    error_line,
    gather,
    wait_for_free,
)
from ray_module.strategies.es.estimator import SGD, Adam, antithetic_gradient, with_weight_decay
from ray_module.strategies.es.noise import PAIRS_PER_SLOT, NoiseTable, pair_index
from ray_module.strategies.es.verification import Verifier


class WorkerFailedError(StartupError):
    """Every answer to a step was an error a retry cannot cure (data, model, settings)."""


class NoLiveWorkersError(LostWorkersError):
    """No worker answered a step (retryable: the job resumes on live nodes). ``verdicts``
    are the step's findings against answers it left out: reported all the same."""

    def __init__(self, message: str, verdicts: Sequence[VerdictEvent] = ()) -> None:
        super().__init__(message)
        self.verdicts = list(verdicts)


# How much a worker's earlier speed counts against its latest step's: enough to ride out one
# slow step (a busy moment on its machine), little enough to follow a lasting change.
SPEED_MEMORY = 0.5


@dataclass(eq=False)
class Worker(PoolMember):
    rank: int = 0
    pairs_per_s: float | None = None  # as the server measured it; None until its first answer

    def measured(self, pairs: int, seconds: float) -> None:
        """Its answer of ``pairs`` pairs arrived ``seconds`` after the step was sent."""
        latest = pairs / max(seconds, 1e-6)
        previous = self.pairs_per_s
        self.pairs_per_s = (
            latest if previous is None else SPEED_MEMORY * previous + (1 - SPEED_MEMORY) * latest
        )


@dataclass
class StepResult:
    theta: np.ndarray
    metrics: dict[str, Any]
    credits: list[Credit]
    verdicts: list[VerdictEvent] = field(default_factory=list)


def make_optimizer(settings: ESSettings) -> Adam | SGD:
    if settings.optimizer == "sgd":
        return SGD(settings.learning_rate, settings.momentum)
    return Adam(settings.learning_rate, settings.beta1, settings.beta2)


def split_population(population: int, workers: Sequence[Worker]) -> list[int]:
    """Pairs per worker: in proportion to its measured speed (one not yet measured counts as
    the mean of those that are; alike nodes split as evenly as possible, the first ones taking
    the remainder), a quarter of that for a node on probation. (A speed is measured over a
    whole answer, its fixed costs too, so a small share looks a little slower: a node on
    probation settles somewhat under a quarter, never under one pair.)"""
    known = [w.pairs_per_s for w in workers if w.pairs_per_s is not None]
    typical = sum(known) / len(known) if known else 1.0
    speeds = [typical if w.pairs_per_s is None else w.pairs_per_s for w in workers]
    return weighted_split(
        population, [share_weight(w.check_rate) * v for w, v in zip(workers, speeds, strict=True)]
    )


def first_indices(step: int, shares: Sequence[int | None], workers: Sequence[Worker]) -> list[int]:
    """Where each worker's pairs start: contiguous runs of the step's pairs for a fixed
    population, a numbering of its own for each worker under a time budget."""
    if any(share is None for share in shares):
        return [pair_index(step, w.rank, 0) for w in workers]
    starts = np.cumsum([0, *shares[:-1]])
    return [pair_index(step, 0, int(start)) for start in starts]


NOT_AS_DEALT = "its answer holds other pairs than the ones it was dealt"


def as_dealt(answer: Any, first: int, pairs: int | None, *, budget: bool) -> bool:
    """Whether an answer holds the pairs it was dealt, in order from ``first``: all ``pairs``
    of them, or under a time ``budget`` as many as it managed (at least one, at most its
    share or a slot's). A worker that reports other indices (another worker's pairs, one pair
    twice) would bias the update."""
    try:
        indices = np.asarray(answer["indices"])
        losses = np.asarray(answer["losses"])
    except (KeyError, TypeError, ValueError):
        return False
    limit = PAIRS_PER_SLOT if pairs is None else pairs
    count = len(indices) if budget and indices.ndim == 1 else limit
    return (
        1 <= count <= limit
        and indices.shape == (count,)
        and losses.shape == (count, 2)
        and np.array_equal(indices, np.arange(first, first + count))
    )


def in_pair_order(answers: list[dict[str, Any]]) -> tuple[list[int], np.ndarray, float]:
    """The answers' pair indices and losses ([plus, minus] rows) in the order of the pairs,
    not of the answers: the update sums them in the same order however the step was dealt.
    Also the center loss of the answer with the first pairs (the same weights and batch on
    every worker: whoever was dealt pair 0)."""
    ordered = sorted(answers, key=lambda answer: int(answer["indices"][0]))
    indices = [int(i) for answer in ordered for i in answer["indices"]]
    losses = np.concatenate([answer["losses"] for answer in ordered]).astype(np.float64)
    return indices, losses, float(ordered[0]["center_loss"])


def payload_bytes(answer: dict[str, Any]) -> int:
    """What a worker sent for a step: its indices, losses and two scalars."""
    return int(answer["indices"].nbytes + answer["losses"].nbytes + 2 * 8)


class ESServer:
    def __init__(
        self,
        workers: list[Worker],
        settings: ESSettings,
        noise: NoiseTable,
        optimizer: Adam | SGD,
        *,
        check_cancelled: Callable[[], None] = lambda: None,
        verifier: Verifier | None = None,
    ) -> None:
        self.verifier = verifier
        self.workers = workers
        self.settings = settings
        self.noise = noise
        self.optimizer = optimizer
        self.check_cancelled = check_cancelled
        self.shared = SharedWeights()

    def run_step(self, step: int, theta: np.ndarray) -> StepResult:

        started = time.perf_counter()
        ready = wait_for_free(
            self.workers,
            1,
            unit="ES workers",
            error=NoLiveWorkersError,
            timeout_s=self.settings.step_timeout_s,
            check_cancelled=self.check_cancelled,
        )
        settings = self.settings
        theta_ref = self.shared.ref(theta)
        batch_id = (step - 1) // settings.new_tokens_interval
        shares = (
            split_population(settings.population, ready)
            if settings.population is not None
            else [None] * len(ready)
        )
        firsts = first_indices(step, shares, ready)
        dealt = {
            worker.rank: (worker, first, share)
            for worker, first, share in zip(ready, firsts, shares, strict=True)
            if share != 0
        }
        pending = {
            worker.handle.evaluate.remote(
                first, theta_ref, batch_id, share, settings.time_per_step_s
            ): (rank, worker)
            for rank, (worker, first, share) in dealt.items()
        }
        # A worker lost mid-step or late is left out of this step only.
        deadline_s = (settings.time_per_step_s or 0) + settings.step_timeout_s
        gathered = gather(pending, deadline_s, self.check_cancelled)
        final = gathered.final_errors()
        if final and not gathered.answers:
            raise WorkerFailedError(f"ES workers failed: {error_line(final[0][1])}")
        answers = []
        verdicts: list[VerdictEvent] = []
        budget = settings.time_per_step_s is not None
        for rank, answer in gathered.answers:
            worker, first, share = dealt[rank]
            if not as_dealt(answer, first, share, budget=budget):
                worker.stop()  # its work cannot be trusted: it takes no further part
                verdicts.append(VerdictEvent(worker.node_id, step, False, detail=NOT_AS_DEALT))
                continue
            worker.measured(len(answer["indices"]), gathered.arrived_s[rank])
            answers.append({**answer, "rank": rank})
        for rank in gathered.late:  # at most as fast as its share by the deadline
            worker, _, share = dealt[rank]
            worker.measured(share or 1, deadline_s)
        if self.verifier is not None and answers:
            checked, invalid = self.verifier.check(
                step, theta, theta_ref, batch_id, answers, self.workers
            )
            verdicts.extend(checked)
            answers = [a for a in answers if a["rank"] not in invalid]
            for worker in self.workers:
                if worker.rank in invalid:
                    worker.stop()
        evaluated = time.perf_counter()
        if not answers:
            raise NoLiveWorkersError(f"no ES worker answered step {step}", verdicts)
        indices, losses, center = in_pair_order(answers)
        gradient = antithetic_gradient(
            losses[:, 0], losses[:, 1], self.noise.perturbation, indices, settings.sigma,
            self.noise.num_params,
        )  # fmt: skip
        gradient = with_weight_decay(gradient, theta, settings.weight_decay)
        new_theta = self.optimizer.step(theta, gradient)
        update_s = time.perf_counter() - evaluated
        evaluations = 2 * len(indices)
        metrics: dict[str, Any] = {
            "loss": float(center),
            "perturbed_loss": float(losses.mean()),
            "bits_per_character": float(center) / math.log(2),
            "evaluations": evaluations,
            "evaluations_per_s": evaluations / max(evaluated - started, 1e-9),
            "live_workers": sum(1 for w in self.workers if w.alive),
            "workers_answered": len(answers),
            "bytes_from_workers": sum(payload_bytes(a) for a in answers),
            "bytes_to_workers": int(theta.nbytes) * len(pending),
            "update_seconds": update_s,
            "step_seconds": time.perf_counter() - started,
            "num_params": self.noise.num_params,
            "batch": batch_id,
        }
        by_rank = {w.rank: w for w in self.workers}
        credits = [by_rank[a["rank"]].credit(float(a["seconds"])) for a in answers]
        return StepResult(new_theta, metrics, credits, verdicts)

    def validate(self, theta: np.ndarray) -> tuple[Credit, dict[str, Any]] | None:

        theta_ref = self.shared.ref(theta)
        results = ask_available(
            self.workers,
            lambda worker: worker.handle.validate.remote(theta_ref, self.settings.sample_length),
            everyone=False,
            timeout_s=self.settings.step_timeout_s,
            check_cancelled=self.check_cancelled,
        )
        if not results:
            return None
        worker, answer = results[0]
        return worker.credit(float(answer["seconds"])), answer["metrics"]
