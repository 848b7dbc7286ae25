"""Model size overrides, as both sides check them: which keys each model type takes, the
largest value of each, and a rough bound on what training such a model takes in memory, so
that a job cannot ask for a model its requirements could never hold (the probe's
``hidden_size: 1e9`` was accepted)."""

from __future__ import annotations

from typing import Any

# Each model type's size overrides, and the largest each may be.
OVERRIDE_LIMITS: dict[str, dict[str, int]] = {
    "simple_transformer": {"n_layer": 96, "n_embd": 16_384, "n_head": 256, "n_positions": 32_768},
    "text_to_text": {"d_model": 16_384, "layers": 96, "heads": 256, "ffn_dim": 65_536},
    "classifier": {"hidden_size": 65_536, "channels": 4_096},
    "char_rnn": {"hidden_size": 16_384, "num_layers": 64},
}
WIDTHS = ("n_embd", "d_model", "hidden_size", "channels")
DEPTHS = ("n_layer", "layers", "num_layers")
# Training keeps weights, gradients and two Adam moments in float32: 16 bytes a parameter.
TRAINING_BYTES_PER_PARAMETER = 16
GB = 1024**3


def allowed_overrides(model_type: str) -> frozenset[str]:
    return frozenset(OVERRIDE_LIMITS.get(model_type, {}))


def override_problem(model_type: str, overrides: dict[str, Any], memory_gb: float) -> str | None:
    """Why ``overrides`` cannot be (an unknown key, a value that is not a whole number in
    range, a model its memory could never train), or None."""
    limits = OVERRIDE_LIMITS.get(model_type, {})
    unknown = sorted(set(overrides) - set(limits))
    if unknown:
        return f"unknown model overrides {unknown} for {model_type}; allowed: {sorted(limits)}"
    for key, value in overrides.items():
        # bool is an int subclass; True layers is a typo, not a size.
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits[key]:
            return f"override {key!r} must be a whole number from 1 to {limits[key]}, got {value!r}"
    width = max((overrides[k] for k in WIDTHS if k in overrides), default=0)
    depth = max((overrides[k] for k in DEPTHS if k in overrides), default=1)
    # A transformer block holds about 12 width² parameters; an RNN layer or MLP less.
    needed_gb = 12 * depth * width**2 * TRAINING_BYTES_PER_PARAMETER / GB
    if needed_gb > memory_gb:
        return (
            f"a model of width {width} and depth {depth} needs about {needed_gb:.3g} GB to "
            f"train; requirements.memory is {memory_gb:g}"
        )
    return None
