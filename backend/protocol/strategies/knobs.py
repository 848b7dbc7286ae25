"""Checking a strategy's ``training_config`` knobs: one rule table per strategy, one parser.

Every error is a SettingsError (a ValueError) that names the field, so the gateway answers
422 at submit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import SettingsError

# Generic job knobs that every strategy tolerates.
GENERIC_KEYS = frozenset({"strategy", "num_workers"})


@dataclass(frozen=True)
class KnobRules:
    strategy: str
    ints: dict[str, tuple[int, int]] = field(default_factory=dict)  # inclusive
    positive: dict[str, tuple[float, float]] = field(default_factory=dict)  # (low, high]
    non_negative: dict[str, tuple[float, float]] = field(default_factory=dict)  # [low, high]
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Knobs of other strategies, refused with this strategy's equivalent.
    elsewhere: dict[str, str] = field(default_factory=dict)


def parse_knobs(training: dict[str, Any], rules: KnobRules, known: Iterable[str]) -> dict[str, Any]:
    """The checked values of ``training`` (generic keys and nulls dropped)."""
    known = set(known)
    values: dict[str, Any] = {}
    for key, value in training.items():
        if key in GENERIC_KEYS or value is None:
            continue
        if key in rules.elsewhere:
            raise SettingsError(
                f"{rules.strategy} does not use '{key}'; use {rules.elsewhere[key]}"
            )
        if key not in known:
            raise SettingsError(
                f"unknown {rules.strategy} setting '{key}' (known: {', '.join(sorted(known))})",
                key,
            )
        try:
            values[key] = _checked(key, value, rules)
        except SettingsError as error:
            raise SettingsError(str(error), key) from None
    return values


def _checked(key: str, value: Any, rules: KnobRules) -> Any:
    if key in rules.choices:
        options = rules.choices[key]
        if value not in options:
            raise SettingsError(f"{key} must be one of {', '.join(options)}, got {value!r}")
        return value
    if key in rules.ints:
        low, high = rules.ints[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SettingsError(f"{key} must be an integer from {low} to {high}, got {value!r}")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise SettingsError(f"{key} must be a number, got {value!r}")
    if key in rules.non_negative:
        low, high = rules.non_negative[key]
        if not low <= value <= high:
            raise SettingsError(f"{key} must be >= {low:g} and <= {high:g}, got {value!r}")
        return float(value)
    if key not in rules.positive:
        raise SettingsError(f"{key} cannot be set in training_config")
    low, high = rules.positive[key]
    if not low < value <= high:
        raise SettingsError(f"{key} must be > {low:g} and <= {high:g}, got {value!r}")
    return float(value)


def run_length(
    epochs: int | None, max_steps: int | None, batches_per_epoch: int, default_epochs: int
) -> int:
    """Steps of a run: epochs and max_steps both bound it, max_steps alone sets it, neither
    means ``default_epochs``."""
    if epochs:
        total = epochs * batches_per_epoch
        return min(total, max_steps) if max_steps else total
    return max_steps or default_epochs * batches_per_epoch
