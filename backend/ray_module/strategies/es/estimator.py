"""From antithetic losses to a gradient estimate, and the optimizers that apply it.

Fitness shaping (centered ranks) makes the update invariant to the loss's scale and robust
to outliers; with antithetic pairs (theta + sigma*eps_i, theta - sigma*eps_i) the estimate
of the loss gradient is

    g = 1 / (2 n sigma) * sum_i (r(L+_i) - r(L-_i)) * eps_i

where r are the centered ranks of all 2n losses and n is the number of pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def centered_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks mapped linearly onto [-0.5, 0.5] (lowest value -> -0.5). Tied values share their
    average rank, so a flat loss (every perturbation equal) gives no step at all."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size < 2:
        return np.zeros_like(flat).reshape(np.shape(values))
    order = flat.argsort(kind="stable")
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(flat.size)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = sums[inverse] / counts[inverse]
    return (ranks / (flat.size - 1) - 0.5).reshape(np.shape(values))


def antithetic_gradient(
    losses_plus: np.ndarray,
    losses_minus: np.ndarray,
    perturbation: Callable[[int], np.ndarray],
    indices: list[int],
    sigma: float,
    num_params: int,
) -> np.ndarray:
    """The rank-shaped loss-gradient estimate (float64)."""
    shaped = centered_ranks(np.concatenate([losses_plus, losses_minus]))
    n = len(indices)
    weights = shaped[:n] - shaped[n:]
    gradient = np.zeros(num_params, dtype=np.float64)
    for weight, index in zip(weights, indices, strict=True):
        if weight != 0.0:
            gradient += weight * perturbation(index)
    return gradient / (2 * n * sigma)


@dataclass
class Adam:
    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    m: np.ndarray | None = field(default=None, repr=False)
    v: np.ndarray | None = field(default=None, repr=False)
    t: int = 0

    def step(self, theta: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m = np.zeros_like(gradient)
            self.v = np.zeros_like(gradient)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * gradient
        self.v = self.beta2 * self.v + (1 - self.beta2) * gradient**2
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        update = self.learning_rate * m_hat / (np.sqrt(v_hat) + self.epsilon)
        return (theta - update).astype(theta.dtype)


@dataclass
class SGD:
    learning_rate: float
    momentum: float = 0.0
    velocity: np.ndarray | None = field(default=None, repr=False)
    t: int = 0

    def step(self, theta: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.velocity is None:
            self.velocity = np.zeros_like(gradient)
        self.t += 1
        self.velocity = self.momentum * self.velocity + gradient
        return (theta - self.learning_rate * self.velocity).astype(theta.dtype)


def with_weight_decay(gradient: np.ndarray, theta: np.ndarray, decay: float) -> np.ndarray:
    """L2 weight decay: ``decay * theta`` added to the loss gradient (the reference's
    ``l2coeff``), pulling every parameter toward zero."""
    return gradient + decay * theta.astype(np.float64) if decay else gradient
