"""What a job asks of the pool beyond its requirements' workers, declared by its strategy on
the node side and priced and placed by the control plane."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtraShare:
    """A part of a job placed beside its requirements' workers, with its own shape: split's
    data stage (``count`` loaders of this size each), priced and placed like the rest."""

    role: str
    gpu: int
    cpu_cores: float
    memory_gb: float
    count: int = 1
