"""Federated checkpoints: the global weights and the server optimizer's momentum, and the
round they belong to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_module.storage.checkpoints import load_arrays, save_arrays


@dataclass(frozen=True)
class FederatedCheckpoint:
    round: int
    weights: list[np.ndarray]
    velocity: list[np.ndarray] | None


def save_checkpoint(directory: Path, checkpoint: FederatedCheckpoint) -> None:
    arrays = _named("weight", checkpoint.weights)
    if checkpoint.velocity is not None:
        arrays.update(_named("velocity", checkpoint.velocity))
    state = {"round": checkpoint.round, "layers": len(checkpoint.weights)}
    save_arrays(directory, arrays, state)


def load_checkpoint(directory: Path) -> FederatedCheckpoint | None:
    loaded = load_arrays(directory)
    if loaded is None:
        return None
    arrays, state = loaded
    layers = int(state["layers"])
    velocity = _ordered(arrays, "velocity", layers) if "velocity.00000" in arrays else None
    return FederatedCheckpoint(int(state["round"]), _ordered(arrays, "weight", layers), velocity)


def _named(prefix: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{index:05d}": array for index, array in enumerate(arrays)}


def _ordered(named: dict[str, np.ndarray], prefix: str, count: int) -> list[np.ndarray]:
    return [named[f"{prefix}.{index:05d}"] for index in range(count)]
