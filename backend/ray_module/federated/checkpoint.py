"""Federated checkpoints: the global weights and the server optimizer's momentum as
safetensors, the round as JSON. Nothing is pickled: nodes write these files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_module.directories import readable, replace_directory, staging_for

WEIGHTS_FILE = "global.safetensors"
MOMENTUM_FILE = "server_momentum.safetensors"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class FederatedCheckpoint:
    round: int
    weights: list[np.ndarray]
    velocity: list[np.ndarray] | None


def save_checkpoint(directory: Path, checkpoint: FederatedCheckpoint) -> None:
    """Write to a staging directory, then swap it in: a crash leaves one whole copy."""
    from safetensors.numpy import save_file

    staging = staging_for(directory)
    save_file(_named(checkpoint.weights), str(staging / WEIGHTS_FILE))
    if checkpoint.velocity is not None:
        save_file(_named(checkpoint.velocity), str(staging / MOMENTUM_FILE))
    (staging / STATE_FILE).write_text(
        json.dumps({"round": checkpoint.round, "arrays": len(checkpoint.weights)})
    )
    replace_directory(staging, directory)


def load_checkpoint(directory: Path) -> FederatedCheckpoint | None:
    from safetensors.numpy import load_file

    found = readable(directory)
    if found is None:
        return None
    directory = found
    state_path = directory / STATE_FILE
    if not state_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        return None
    state = json.loads(state_path.read_text())
    weights = _ordered(load_file(str(directory / WEIGHTS_FILE)), int(state["arrays"]))
    velocity = None
    if (directory / MOMENTUM_FILE).is_file():
        velocity = _ordered(load_file(str(directory / MOMENTUM_FILE)), int(state["arrays"]))
    return FederatedCheckpoint(int(state["round"]), weights, velocity)


def _named(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{index:05d}": np.ascontiguousarray(array) for index, array in enumerate(arrays)}


def _ordered(named: dict[str, np.ndarray], count: int) -> list[np.ndarray]:
    return [named[f"{index:05d}"] for index in range(count)]
