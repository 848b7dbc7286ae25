"""The federated server's rounds over client hosts (Ray actors).

Each round: sample clients among the available ones, put the global weights into the object
store once, ask each sampled client to fit, wait until all have answered or
``round_timeout_s`` has passed, and aggregate what came back weighted by ``num_examples``.
A straggler's late answer is ignored (its host is busy until it arrives); a client whose
actor died is data, not a crash. A round with fewer than ``min_fit_clients`` answers is
retried; only accepted answers are credited.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.events import VerdictEvent
from protocol.strategies.fedavg import FedAvgSettings
from ray_module.errors import LostWorkersError, RetryableRunError, SettingsError, StartupError
from ray_module.strategies.actor_pool import (
    Credit,
    PoolMember,
    SharedWeights,
    ask_available,
    error_line,
    gather,
    wait_for_free,
)
from ray_module.strategies.fedavg.aggregate import (
    ClientUpdate,
    ServerOptimizer,
    nbytes,
    weighted_average,
)
from ray_module.strategies.fedavg.verification import FedAvgVerifier

Weights = list[np.ndarray]


class NotEnoughClientsError(LostWorkersError):
    """Too few clients are alive to go on (retryable: the job resumes on live nodes)."""


class RoundFailedError(RetryableRunError):
    """A round could not collect ``min_fit_clients`` answers after its retries."""


class ClientFailedError(StartupError):
    """A client failed for a reason retrying cannot fix (bad data, model or settings)."""


@dataclass(eq=False)
class Host(PoolMember):
    """A client host actor, the clients it serves and what it reported at start."""

    clients: tuple[int, ...] = ()
    ready: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundResult:
    weights: Weights
    metrics: dict[str, Any]
    credits: list[Credit]
    verdicts: list[VerdictEvent] = field(default_factory=list)


class FedAvgServer:
    def __init__(
        self,
        hosts: list[Host],
        settings: FedAvgSettings,
        optimizer: ServerOptimizer,
        *,
        check_cancelled: Callable[[], None] = lambda: None,
        verifier: FedAvgVerifier | None = None,
    ) -> None:
        self.verifier = verifier
        self.hosts = hosts
        self.settings = settings
        self.optimizer = optimizer
        self.check_cancelled = check_cancelled
        self.host_of = {client: host for host in hosts for client in host.clients}
        self.shared = SharedWeights()

    # -- one round ----------------------------------------------------------------------
    def run_round(self, round_number: int, weights: Weights) -> RoundResult:

        started = time.perf_counter()
        weights_ref = self.shared.ref(weights)  # each node fetches it once
        size = nbytes(weights)
        totals = {"sampled": 0, "returned": 0, "dropped": 0, "failed": 0, "bytes_down": 0}
        for attempt in range(1, self.settings.max_round_retries + 2):
            sampled = self.sample(round_number, attempt)
            answers, dropped, failed, errors = self.collect(round_number, sampled, weights_ref)
            totals["sampled"] += len(sampled)
            totals["returned"] += len(answers)
            totals["dropped"] += len(dropped)
            totals["failed"] += len(failed)
            totals["bytes_down"] += size * len(sampled)
            if len(answers) >= self.settings.fit_minimum:
                break
            if errors and not answers:
                raise ClientFailedError(errors[0])
        else:
            raise RoundFailedError(
                f"round {round_number}: fewer than {self.settings.fit_minimum} clients answered "
                f"in {self.settings.max_round_retries + 1} tries"
            )
        verdicts: list[VerdictEvent] = []
        if self.verifier is not None:
            verdicts, invalid = self.verifier.check(
                round_number, weights, weights_ref, answers, self.host_of, self.hosts
            )
            # Work that failed is left out of the average (the rest re-weighted by examples),
            # and its host takes no further part in the job.
            answers = [a for a in answers if self.host_of[a["client"]].node_id not in invalid]
            for host in self.hosts:
                if host.node_id in invalid:
                    host.stop()
            if not answers:
                raise NotEnoughClientsError(f"round {round_number}: no valid client update")
        updates = [ClientUpdate(a["weights"], int(a["num_examples"])) for a in answers]
        new_weights = self.optimizer.step(weights, weighted_average(updates))
        credits = [self.host_of[a["client"]].credit(float(a["seconds"])) for a in answers]
        examples = sum(u.num_examples for u in updates)
        node_seconds: dict[str, float] = {}
        for credit in credits:
            key = str(credit.node_id)
            node_seconds[key] = node_seconds.get(key, 0.0) + credit.seconds
        metrics: dict[str, Any] = {
            "train_loss": sum(a["train_loss"] * a["num_examples"] for a in answers) / examples,
            "clients_sampled": totals["sampled"],
            "clients_returned": totals["returned"],
            "clients_dropped": totals["dropped"],
            "clients_failed": totals["failed"],
            "clients_accepted": len(answers),
            "round_attempts": attempt,
            "examples": examples,
            "bytes_down": totals["bytes_down"],
            "bytes_up": size * totals["returned"],
            "bytes_moved": totals["bytes_down"] + size * totals["returned"],
            "node_seconds": node_seconds,
        }
        evaluated = self.evaluate(new_weights)
        if evaluated is not None:
            evaluation_credits, evaluation = evaluated
            metrics.update(evaluation)
            credits.extend(evaluation_credits)
        metrics["round_seconds"] = time.perf_counter() - started
        return RoundResult(new_weights, metrics, credits, verdicts)

    def sample(self, round_number: int, attempt: int) -> list[int]:
        """Clients to ask this round: ``fraction_fit`` of the available ones, at least
        ``min_fit_clients``; waits (up to ``round_timeout_s``) for busy hosts if too few are
        free, and gives up if too few are alive."""
        free = wait_for_free(
            self.hosts,
            self.settings.available_minimum,
            unit="clients",
            error=NotEnoughClientsError,
            timeout_s=self.settings.round_timeout_s,
            check_cancelled=self.check_cancelled,
            size=lambda host: len(host.clients),
        )
        available = [client for host in free for client in host.clients]
        count = sample_size(len(available), self.settings.fraction_fit, self.settings.fit_minimum)
        if count == len(available):
            return sorted(available)
        rng = np.random.default_rng([self.settings.seed, round_number, attempt])
        return sorted(int(c) for c in rng.choice(available, size=count, replace=False))

    def collect(
        self, round_number: int, sampled: list[int], weights_ref: Any
    ) -> tuple[list[dict[str, Any]], list[int], list[int], list[str]]:
        """(answers, dropped stragglers, failed clients, deterministic error messages)."""
        pending = {
            self.host_of[c].handle.fit.remote(c, round_number, weights_ref): (c, self.host_of[c])
            for c in sampled
        }
        gathered = gather(pending, self.settings.round_timeout_s, self.check_cancelled)
        errors = [
            f"client {client} failed: {error_line(error)}"
            for client, error in gathered.final_errors()
        ]
        failed = sorted([*gathered.dead, *(client for client, _ in gathered.errors)])
        answers = [answer for _, answer in gathered.answers]
        return answers, sorted(gathered.late), failed, errors

    def evaluate(self, weights: Weights) -> tuple[list[Credit], dict[str, Any]] | None:
        """Validation of the new global model. The held-out split is the same on every host,
        so one free host evaluates; with node-local data every free host evaluates its own
        clients' held-out examples and the metrics are averaged, weighted by examples."""
        weights_ref = self.shared.ref(weights)
        results = ask_available(
            self.hosts,
            lambda host: host.handle.evaluate.remote(weights_ref),
            everyone=self.settings.partition == "node_local",
            timeout_s=self.settings.round_timeout_s,
            check_cancelled=self.check_cancelled,
        )
        if not results:
            return None
        credits = [host.credit(float(result["seconds"])) for host, result in results]
        return credits, combine_evaluations([result for _, result in results])


def combine_evaluations(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Numeric metrics averaged by examples evaluated; anything else from the first."""
    total = sum(int(r["examples"]) for r in results)
    combined = dict(results[0]["metrics"])
    for key, value in results[0]["metrics"].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            combined[key] = sum(r["metrics"][key] * int(r["examples"]) for r in results) / total
    combined["validation_examples"] = total
    return combined


def sample_size(available: int, fraction: float, minimum: int) -> int:
    return min(available, max(math.floor(available * fraction), minimum))


def check_round_fits(settings: FedAvgSettings, weights: Weights, memory_gb: float) -> None:
    """A round holds every sampled client's answer (a copy of the weights) on the server
    until it averages them: refuse, before the first round, clients the job's memory cannot
    hold (SettingsError: the job fails once, with the fix, instead of on every retry)."""
    per_round = sample_size(settings.clients, settings.fraction_fit, settings.fit_minimum)
    size = nbytes(weights)
    needed_gb = per_round * size / 1024**3
    if needed_gb > memory_gb:
        raise SettingsError(
            f"clients: a round collects {per_round} clients' weights of {size / 1024**2:.3g} MB "
            f"each ({needed_gb:.3g} GB) on the server; requirements.memory is {memory_gb:g} GB "
            "(use fewer clients or a smaller fraction_fit)",
            "clients",
        )
