"""A job spec from ``distlm submit``'s flags, for the common fields; a spec file for the rest.

The gateway checks everything (a wrong knob for a strategy is its 422, naming the field);
this only says which knob "--steps" is, since each training mode counts in its own unit.
"""

from __future__ import annotations

from typing import Any

# The gateway's default strategy per model type, and what each strategy calls its length.
DEFAULT_STRATEGY = {
    "simple_transformer": "data_parallel",
    "char_rnn": "es",
    "classifier": "fedavg",
    "text_to_text": "fedavg",
}
STEPS_KNOB = {"data_parallel": "max_steps", "split": "max_steps", "es": "steps", "fedavg": "rounds"}
BUILTIN_DATASETS = ("digits", "stdlib-text", "synthetic-t2t")


def spec_from_flags(
    base: dict[str, Any],
    *,
    model_type: str | None,
    model: str | None,
    dataset: str | None,
    data_path: str | None,
    strategy: str | None,
    steps: int | None,
    workers: int | None,
    gpu: int | None,
    cpu_cores: float | None,
    memory: float | None,
    max_tokens: float | None,
    name: str | None,
) -> dict[str, Any]:
    """``base`` (a spec file's contents, or {}) with the flags given laid over it."""
    spec = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    model_config = spec.setdefault("model_config", {})
    if model_type:
        model_config["type"] = model_type
    if model:
        model_config["model_name"] = model
    if dataset or data_path:
        data = spec.setdefault("data_config", {})
        if data_path:
            data.update(data_source="local", path=data_path, dataset_name=dataset or "local")
        else:
            source = "builtin" if dataset in BUILTIN_DATASETS else "huggingface"
            data.update(data_source=source, dataset_name=dataset)
    training = spec.setdefault("training_config", {})
    if strategy:
        training["strategy"] = strategy
    if steps is not None:
        chosen = training.get("strategy") or DEFAULT_STRATEGY.get(model_config.get("type", ""))
        if chosen not in STEPS_KNOB:
            raise ValueError("--steps needs --strategy or a known --model-type")
        training[STEPS_KNOB[chosen]] = steps
    if workers is not None:
        training["num_workers"] = workers
    requirements = spec.setdefault("requirements", {})
    for key, value in (("gpu", gpu), ("cpu_cores", cpu_cores), ("memory", memory)):
        if value is not None:
            requirements[key] = value
    if max_tokens is not None:
        spec["max_tokens"] = max_tokens
    if name:
        spec["name"] = name
    if not training:
        del spec["training_config"]
    if not requirements:
        del spec["requirements"]
    if "type" not in model_config or "data_config" not in spec:
        raise ValueError("a job needs a model (--model-type, --model) and data (--dataset)")
    return spec
