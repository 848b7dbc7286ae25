"""The ``training_config`` knobs of strategy ``es``, checked once (at submit and in the run)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

GENERIC_KEYS = frozenset({"strategy", "num_workers"})
OTHER_STRATEGY_KEYS = {"epochs": "steps", "max_steps": "steps", "rounds": "steps"}
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class ESSettings:
    steps: int = 100
    population: int | None = 64  # antithetic pairs per step, shared by the live workers
    time_per_step_s: float | None = None  # if set: each worker evaluates pairs for this long
    sigma: float = 0.02
    learning_rate: float = 0.03
    optimizer: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    batch_size: int = 16
    seq_len: int = 64
    new_tokens_interval: int = 1  # a fresh text batch every N steps
    validation_interval: int = 10
    checkpoint_interval: int = 10
    step_timeout_s: float = 120.0  # a worker that has not answered by then is left out
    hidden_size: int | None = None
    num_layers: int | None = None
    seed: int = 0
    sample_length: int = 80

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_INTS = {
    "steps": (1, 1_000_000),
    "population": (1, 1_000_000),
    "batch_size": (1, 4096),
    "seq_len": (2, 4096),
    "new_tokens_interval": (1, 1_000_000),
    "validation_interval": (1, 1_000_000),
    "checkpoint_interval": (1, 1_000_000),
    "hidden_size": (1, 4096),
    "num_layers": (1, 16),
    "seed": (0, 2**31 - 1),
    "sample_length": (1, 10_000),
}
_FLOATS = {
    "time_per_step_s": (0.0, 3600.0),
    "sigma": (0.0, 10.0),
    "learning_rate": (0.0, 10.0),
    "beta1": (0.0, 0.999999),
    "beta2": (0.0, 0.999999),
    "step_timeout_s": (0.0, 24 * 3600.0),
}
_NON_NEGATIVE = {"momentum": (0.0, 1.0), "weight_decay": (0.0, 10.0)}


def parse_es_settings(training: dict[str, Any]) -> ESSettings:
    known = {f.name for f in fields(ESSettings)}
    values: dict[str, Any] = {}
    for key, value in training.items():
        if key in GENERIC_KEYS or value is None:
            continue
        if key in OTHER_STRATEGY_KEYS:
            raise ValueError(f"es does not use '{key}'; use {OTHER_STRATEGY_KEYS[key]}")
        if key not in known:
            raise ValueError(f"unknown es setting '{key}' (known: {', '.join(sorted(known))})")
        values[key] = _checked(key, value)
    if "time_per_step_s" in values and "population" not in values:
        values["population"] = None  # the time budget decides how many pairs
    return ESSettings(**values)


def _checked(key: str, value: Any) -> Any:
    if key == "optimizer":
        if value not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {value!r}")
        return value
    if key in _INTS:
        low, high = _INTS[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{key} must be an integer from {low} to {high}, got {value!r}")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if key in _NON_NEGATIVE:
        low, high = _NON_NEGATIVE[key]
        if not low <= value < high + (1e-12 if key == "weight_decay" else 0):
            raise ValueError(f"{key} must be from {low:g} to below {high:g}, got {value!r}")
        return float(value)
    low, high = _FLOATS[key]
    if not low < value <= high:
        raise ValueError(f"{key} must be > {low:g} and <= {high:g}, got {value!r}")
    return float(value)
