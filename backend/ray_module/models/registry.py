"""Which adapter serves which model type. Adding a model type is one module with an adapter
plus one line here; every training mode that shares out its kind of work can then run it.

Adapters are imported on first use, so a classifier-only process never imports transformers.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from protocol.run import ModelRequest
from ray_module.errors import ModelError
from ray_module.models.contract import DataFit, Model, ModelAdapter

ADAPTERS: dict[str, str] = {
    "simple_transformer": "ray_module.models.causal_lm:CausalLMAdapter",
    "text_to_text": "ray_module.models.text_to_text:TextToTextAdapter",
    "classifier": "ray_module.models.classifier:ClassifierAdapter",
    "char_rnn": "ray_module.models.char_rnn:CharRNNAdapter",
}


def adapter_for(model_type: str) -> ModelAdapter:
    where = ADAPTERS.get(model_type)
    if where is None:
        raise ModelError(f"unknown model type {model_type!r}; known: {sorted(ADAPTERS)}")
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)()


def load_model(
    request: ModelRequest,
    *,
    fit: DataFit | None = None,
    seed: int = 0,
    local_root: Path | None = None,
    device: torch.device | None = None,
) -> Model:
    """The model ``request`` names, built or loaded by its type's adapter, on ``device``."""
    adapter = adapter_for(request.model_type)
    network, companion = adapter.load(
        request, fit=fit or DataFit(), seed=seed, local_root=local_root
    )
    return Model(adapter, network, companion).to(device or torch.device("cpu"))
