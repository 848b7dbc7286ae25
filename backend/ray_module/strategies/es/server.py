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
from ray_module.strategies.es.noise import NoiseTable
from ray_module.strategies.es.verification import Verifier


class WorkerFailedError(StartupError):
    """Every answer to a step was an error a retry cannot cure (data, model, settings)."""


class NoLiveWorkersError(LostWorkersError):
    """No worker answered a step (retryable: the job resumes on live nodes)."""


@dataclass(eq=False)
class Worker(PoolMember):
    rank: int = 0


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


def split_population(population: int, workers: Sequence[PoolMember]) -> list[int]:
    """Pairs per worker: as even as possible among alike nodes (the first ones take the
    remainder), a quarter of a trusted node's share for a node on probation."""
    return weighted_split(population, [share_weight(w.check_rate) for w in workers])


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
        pending = {
            worker.handle.evaluate.remote(
                step, theta_ref, batch_id, share, settings.time_per_step_s
            ): (worker.rank, worker)
            for worker, share in zip(ready, shares, strict=True)
            if share != 0
        }
        # A worker lost mid-step or late is left out of this step only.
        gathered = gather(
            pending,
            (settings.time_per_step_s or 0) + settings.step_timeout_s,
            self.check_cancelled,
        )
        answers = [answer for _, answer in gathered.answers]
        final = gathered.final_errors()
        if final and not answers:
            raise WorkerFailedError(f"ES workers failed: {error_line(final[0][1])}")
        verdicts: list[VerdictEvent] = []
        if self.verifier is not None and answers:
            verdicts, invalid = self.verifier.check(
                step, theta, theta_ref, batch_id, answers, self.workers
            )
            answers = [a for a in answers if a["rank"] not in invalid]
            for worker in self.workers:
                if worker.rank in invalid:
                    worker.stop()
        evaluated = time.perf_counter()
        if not answers:
            raise NoLiveWorkersError(f"no ES worker answered step {step}")
        indices = [int(i) for a in answers for i in a["indices"]]
        losses = np.concatenate([a["losses"] for a in answers]).astype(np.float64)
        gradient = antithetic_gradient(
            losses[:, 0], losses[:, 1], self.noise.perturbation, indices, settings.sigma,
            self.noise.num_params,
        )  # fmt: skip
        gradient = with_weight_decay(gradient, theta, settings.weight_decay)
        new_theta = self.optimizer.step(theta, gradient)
        update_s = time.perf_counter() - evaluated
        evaluations = 2 * len(indices)
        metrics: dict[str, Any] = {
            "loss": float(answers[0]["center_loss"]),
            "perturbed_loss": float(losses.mean()),
            "bits_per_character": float(answers[0]["center_loss"]) / math.log(2),
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
