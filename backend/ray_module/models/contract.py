"""The one contract every model type keeps, so that a training mode only says how work is
shared out (ranks, clients, perturbations, loaders feeding a trainer) and never how a model
type is built, scored or saved.

An adapter knows one model type: how to build or load it (preset, local directory, hub id,
``job:<id>`` once the gateway has fetched that job's model), the loss of a batch, a scorer
that accumulates metrics over batches, predictions, and its save format (safetensors and
JSON, or the transformers format, never a pickle). ``load_model`` gives a mode a ``Model``
that carries its adapter, so the mode calls ``model.loss(batch)`` and nothing else.

A batch is a dict of arrays in the model type's own form (``batch_keys``): what the data
modules make from examples. ``Model.batch`` puts its arrays on the model's device.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from protocol.run import ModelRequest

# torch only where a model is: a job's runner imports this contract to start its workers,
# and would otherwise spend a second importing torch first.
if TYPE_CHECKING:
    import torch
    from torch import nn

Batch = Mapping[str, Any]


def first_rows(batch: Batch, count: int) -> dict[str, Any]:
    """The batch's first ``count`` samples; what is not per sample (a loader's figures
    that travel with its batches) stays as it is."""
    rows = len(batch["input_ids"] if "input_ids" in batch else next(iter(batch.values())))
    return {
        key: value[:count]
        if (isinstance(value, np.ndarray | list | tuple) or is_tensor(value)) and len(value) == rows
        else value
        for key, value in batch.items()
    }


def is_tensor(value: Any) -> bool:
    """A torch tensor (without importing torch: if it is not loaded, there is none)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def cpu() -> torch.device:
    import torch

    return torch.device("cpu")


@dataclass(frozen=True)
class DataFit:
    """What the data tells a model type that sizes itself to it: a classifier's inputs and
    classes, a char-RNN's vocabulary. Model types that do not need it ignore it."""

    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    vocabulary: str = ""
    sizes: Mapping[str, int] = field(default_factory=dict)  # a mode's size defaults
    own_classes: bool = False  # score or predict: a saved classifier keeps its own classes


@dataclass(frozen=True)
class PredictOptions:
    """How predictions and generated text are made."""

    top_k: int = 1
    return_full_probabilities: bool = False
    max_new_tokens: int = 32
    num_beams: int = 1
    generate_at_most: int | None = None  # a scorer generates text for this many samples


class Scorer(Protocol):
    """Accumulates a model's scores over batches; ``metrics`` gives the whole split's."""

    def add(self, batch: Batch) -> None: ...

    def metrics(self) -> dict[str, Any]: ...


class ModelAdapter(ABC):
    """One model type. Stateless: everything a call needs travels in the ``Model``."""

    model_type: ClassVar[str]
    batch_keys: ClassVar[tuple[str, ...]]  # what a batch of this type holds

    @abstractmethod
    def load(
        self, request: ModelRequest, *, fit: DataFit, seed: int, local_root: Path | None
    ) -> tuple[nn.Module, Any]:
        """The network and its companion (tokenizer, config), or ModelError."""

    @abstractmethod
    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        """The batch's mean loss, with gradients when the caller allows them."""

    @abstractmethod
    def scorer(self, model: Model, options: PredictOptions) -> Scorer:
        """A fresh accumulator of this type's scores (accuracy, perplexity, exact match)."""

    @abstractmethod
    def predict(self, model: Model, batch: Batch, options: PredictOptions) -> list[dict]:
        """One row per sample of the batch, in order (without the sample's id)."""

    @abstractmethod
    def save(self, model: Model, directory: Path) -> None:
        """Write the model so that ``load`` can name ``directory`` to continue from it."""


@dataclass
class Model:
    """A loaded model: its network (which a mode may wrap, e.g. in DDP), its companion and
    the adapter that knows its type."""

    adapter: ModelAdapter
    network: nn.Module
    companion: Any
    device: torch.device = field(default_factory=cpu)

    @property
    def model_type(self) -> str:
        return self.adapter.model_type

    @property
    def unwrapped(self) -> nn.Module:
        """The network without a data-parallel wrapper around it."""
        return getattr(self.network, "module", self.network)

    def to(self, device: torch.device) -> Model:
        self.network.to(device)
        self.device = device
        return self

    def batch(self, arrays: Batch) -> dict[str, Any]:
        """The batch with its arrays as tensors on the model's device. Arrays from Ray's
        object store are read-only: torch wants its own copy of those."""
        import torch

        placed: dict[str, Any] = {}
        for key, value in arrays.items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                value = torch.from_numpy(np.require(value, requirements="W"))
            placed[key] = value.to(self.device) if isinstance(value, torch.Tensor) else value
        return placed

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.adapter.loss(self, batch)

    def scorer(self, options: PredictOptions | None = None) -> Scorer:
        return self.adapter.scorer(self, options or PredictOptions())

    def predict(self, batch: Batch, options: PredictOptions | None = None) -> list[dict]:
        return self.adapter.predict(self, batch, options or PredictOptions())

    def save(self, directory: Path) -> None:
        self.adapter.save(self, directory)
