"""The shared noise table: one block of standard normal numbers that every worker and the
server generate from the same seed. A perturbation is a slice of it, named by an integer
index, so a worker reports ``(index, loss)`` and anyone can rebuild ε from the index alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_TABLE_SIZE = 1 << 22  # 4M floats (16 MB): plenty of distinct slices for small models
TABLE_SLACK = 8  # the table is at least this many parameter vectors long
PAIRS_PER_SLOT = 1_000_000  # the most pairs one slot of a step numbers (population's limit)


def table_size(num_params: int) -> int:
    return max(MIN_TABLE_SIZE, TABLE_SLACK * num_params)


@dataclass
class NoiseTable:
    seed: int
    num_params: int
    noise: np.ndarray

    @classmethod
    def create(cls, seed: int, num_params: int) -> NoiseTable:
        rng = np.random.default_rng([seed, 0x5EED])
        noise = rng.standard_normal(table_size(num_params), dtype=np.float32)
        return cls(seed, num_params, noise)

    def offset(self, index: int) -> int:
        """Where perturbation ``index`` starts: a counter-based draw, the same everywhere."""
        high = len(self.noise) - self.num_params + 1
        return int(np.random.default_rng([self.seed, index]).integers(0, high))

    def digest(self, probe_index: int = 0) -> str:
        """A fingerprint of the table, to check that every worker built the same one."""
        import hashlib

        return hashlib.sha256(self.perturbation(probe_index).tobytes()).hexdigest()[:16]

    def perturbation(self, index: int) -> np.ndarray:
        start = self.offset(index)
        return self.noise[start : start + self.num_params]


def pair_index(step: int, slot: int, k: int) -> int:
    """A unique index per (step, slot, k-th pair), so no two evaluations share noise. With a
    fixed population every pair of a step is in slot 0 (pair k of the step, whoever
    evaluates it); under a time budget each worker counts in a slot of its own (its rank)."""
    return (step * 4096 + slot) * PAIRS_PER_SLOT + k
