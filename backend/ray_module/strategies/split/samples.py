"""What the pipeline serves: samples addressed by id, the held-out split, and the order of
an epoch's batches. Pure functions of (size, seed), so every loader, every attempt and a
later ``validate`` job agree on which sample is where."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocol.strategies.split import PARTS  # data_config.split: a side of the split
from ray_module.errors import SettingsError


def split_ids(size: int, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, validation ids): a seeded permutation, its last fraction held out."""
    order = np.random.default_rng(seed).permutation(size)
    # At least one sample held out and at least one left to train on.
    held = min(max(1, round(size * validation_split)), size - 1) if size > 1 else 0
    return np.sort(order[: size - held]), np.sort(order[size - held :])


def part_ids(size: int, part: str | None, validation_split: float, seed: int) -> np.ndarray:
    """The ids a validate or infer job reads: all rows, or one side of the training split."""
    if part in (None, "all"):
        return np.arange(size)
    if part not in PARTS:
        raise SettingsError(f"split must be one of {', '.join(PARTS)} here, got {part!r}", "split")
    train, validation = split_ids(size, validation_split, seed)
    return train if part == "train" else validation


@dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch over ``ids``: batch ``b`` of epoch ``e`` is always the same
    samples, however many loaders serve it and whichever attempt asks."""

    ids: np.ndarray
    batch_size: int
    shuffle: bool
    seed: int

    @property
    def batches(self) -> int:
        return max(1, math.ceil(len(self.ids) / self.batch_size))

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.ids
        return np.random.default_rng((self.seed, epoch)).permutation(self.ids)

    def batch(self, epoch: int, index: int, order: np.ndarray | None = None) -> np.ndarray:
        order = self.order(epoch) if order is None else order
        return order[index * self.batch_size : (index + 1) * self.batch_size]
