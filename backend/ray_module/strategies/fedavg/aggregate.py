"""Server-side aggregation: a weighted average of client weights, and the server optimizer
that turns it into the next global model (FedAvg, or FedAvgM with server momentum).

Weights are lists of numpy arrays in one fixed order (the model's parameter order); nothing
here knows about torch or Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ray_module.errors import FinalRunError

Weights = list[np.ndarray]


class AggregationError(FinalRunError, ValueError):
    """The client updates cannot be combined."""


@dataclass(frozen=True)
class ClientUpdate:
    weights: Weights
    num_examples: int


def weighted_average(updates: Sequence[ClientUpdate]) -> Weights:
    """sum_k n_k * w_k / sum_k n_k, layer by layer, accumulated in float64.

    Integer arrays (counters, not parameters) are taken from the largest client instead of
    averaged.
    """
    if not updates:
        raise AggregationError("no client updates to aggregate")
    total = sum(update.num_examples for update in updates)
    if total <= 0:
        raise AggregationError("client updates carry no examples")
    shapes = [a.shape for a in updates[0].weights]
    for update in updates[1:]:
        if [a.shape for a in update.weights] != shapes:
            raise AggregationError("client updates have different layer shapes")
    largest = max(updates, key=lambda update: update.num_examples)
    averaged: Weights = []
    for layer, reference in enumerate(updates[0].weights):
        if not np.issubdtype(reference.dtype, np.floating):
            averaged.append(largest.weights[layer].copy())
            continue
        acc = np.zeros(reference.shape, dtype=np.float64)
        for update in updates:
            acc += update.weights[layer].astype(np.float64) * update.num_examples
        averaged.append((acc / total).astype(reference.dtype))
    return averaged


@dataclass
class ServerOptimizer:
    """FedAvg (momentum 0, learning rate 1: the average becomes the model) or FedAvgM
    (Hsu et al. 2019): v <- momentum * v + delta; w <- w + lr * v, where delta is the
    average client weights minus the current global weights."""

    learning_rate: float = 1.0
    momentum: float = 0.0
    velocity: Weights | None = field(default=None, repr=False)

    def step(self, global_weights: Weights, average: Weights) -> Weights:
        if self.momentum == 0.0 and self.learning_rate == 1.0:
            return average
        deltas = [
            (a.astype(np.float64) - g.astype(np.float64))
            if np.issubdtype(g.dtype, np.floating)
            else None
            for g, a in zip(global_weights, average, strict=True)
        ]
        if self.velocity is None:
            self.velocity = [
                np.zeros(g.shape, dtype=np.float64) if d is not None else np.zeros(0)
                for g, d in zip(global_weights, deltas, strict=True)
            ]
        updated: Weights = []
        for index, (g, d) in enumerate(zip(global_weights, deltas, strict=True)):
            if d is None:
                updated.append(average[index])
                continue
            self.velocity[index] = self.momentum * self.velocity[index] + d
            step = self.learning_rate * self.velocity[index]
            updated.append((g.astype(np.float64) + step).astype(g.dtype))
        return updated


def server_optimizer(name: str, learning_rate: float, momentum: float) -> ServerOptimizer:
    if name == "fedavg":
        return ServerOptimizer(learning_rate=learning_rate, momentum=0.0)
    if name == "fedavgm":
        return ServerOptimizer(learning_rate=learning_rate, momentum=momentum)
    raise AggregationError(f"unknown server_optimizer {name!r}; use fedavg or fedavgm")


def nbytes(weights: Weights) -> int:
    return int(sum(array.nbytes for array in weights))
