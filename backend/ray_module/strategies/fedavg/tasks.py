"""What a federated client trains: a classifier on labelled arrays or an encoder-decoder on
(input, target) pairs. The model itself (loading, loss, scores, saving) is its type's
adapter's (``ray_module.models``); a task only turns a client's example indices into batches
and runs the local loop. Both expose the same small interface to the client host:

- ``examples`` (how many) and ``partition_labels`` (what a non-IID split skews over);
- ``get_weights`` / ``set_weights``: the model's parameters as numpy arrays, in
  ``named_parameters`` order (tied weights appear once);
- ``train(indices, ...)``: local epochs on a shard, optionally with a FedProx term;
- ``evaluate(indices)``: validation metrics; ``save(directory)``: the model artifact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protocol.run import ModelRequest
from ray_module.data.examples import LabelledData, PairData
from ray_module.models.contract import DataFit, Model, PredictOptions
from ray_module.models.registry import load_model

Weights = list[np.ndarray]


@dataclass(frozen=True)
class LocalTraining:
    """One client's round of local work."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str  # sgd | adam | adamw
    proximal_mu: float
    shuffle_seed: int


@dataclass(frozen=True)
class TrainResult:
    weights: Weights
    num_examples: int
    loss: float
    seconds: float


class TorchTask:
    """Weights, optimizer and the local loop shared by both tasks."""

    loaded: Model
    default_learning_rate: float
    default_optimizer: str

    @property
    def model(self) -> nn.Module:
        return self.loaded.network

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.model.named_parameters()]

    def save(self, directory: Path) -> None:
        self.loaded.save(directory)

    def get_weights(self) -> Weights:
        return [p.detach().cpu().numpy().copy() for p in self.parameters()]

    def set_weights(self, weights: Weights) -> None:
        params = self.parameters()
        if len(weights) != len(params):
            raise ValueError(f"expected {len(params)} arrays of weights, got {len(weights)}")
        with torch.no_grad():
            for param, array in zip(params, weights, strict=True):
                param.copy_(
                    torch.from_numpy(np.require(array, requirements=["C", "W"])).to(param.device)
                )

    def train(self, indices: np.ndarray, local: LocalTraining) -> TrainResult:
        started = time.perf_counter()
        self.model.train()
        params = self.parameters()
        anchor = [p.detach().clone() for p in params] if local.proximal_mu > 0 else None
        optimizer = _optimizer(local.optimizer, params, local.learning_rate)
        generator = torch.Generator().manual_seed(local.shuffle_seed)
        epoch_loss = 0.0
        for _ in range(local.epochs):
            order = torch.randperm(len(indices), generator=generator)
            total, seen = 0.0, 0
            for start in range(0, len(indices), local.batch_size):
                batch = indices[order[start : start + local.batch_size].numpy()]
                loss = self.batch_loss(batch)
                objective = loss
                if anchor is not None:  # FedProx: stay near the global model
                    drift = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                    objective = loss + 0.5 * local.proximal_mu * drift
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
            epoch_loss = total / max(1, seen)
        return TrainResult(
            self.get_weights(), len(indices), epoch_loss, time.perf_counter() - started
        )

    def batch_loss(self, batch: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


class PlainSGD:
    """``torch.optim.SGD(params, lr)`` without momentum, written out: the first
    ``torch.optim`` optimizer a process creates imports torch's compiler stack (0.8 s here),
    which a short-lived client host would pay in its first round."""

    def __init__(self, params: list[nn.Parameter], lr: float) -> None:
        self.params = params
        self.lr = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for param in self.params:
            if param.grad is not None:
                param.add_(param.grad, alpha=-self.lr)


def _optimizer(name: str, params: list[nn.Parameter], lr: float) -> Any:
    if name == "sgd":
        return PlainSGD(params, lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)


def pick_device(gpu: int) -> torch.device:
    # A slot with a logical GPU on a machine without CUDA (tests) trains on the CPU.
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


class ClassifierTask(TorchTask):
    default_learning_rate = 0.1
    default_optimizer = "sgd"

    def __init__(
        self,
        model: ModelRequest,
        data: LabelledData,
        *,
        hidden_size: int | None,
        seed: int,
        device: torch.device,
        local_root: Path | None = None,
    ) -> None:
        self.data = data
        fit = DataFit(
            input_shape=tuple(data.input_shape),
            num_classes=data.num_classes,
            class_names=tuple(data.class_names),
            sizes={"hidden_size": hidden_size} if hidden_size is not None else {},
        )
        self.loaded = load_model(model, fit=fit, seed=seed, local_root=local_root, device=device)
        self.features = torch.from_numpy(self.data.features)
        self.labels = torch.from_numpy(self.data.labels)

    @property
    def examples(self) -> int:
        return len(self.data)

    @property
    def partition_labels(self) -> np.ndarray | None:
        return self.data.labels

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def _batch(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        return self.loaded.batch({"features": self.features[batch], "labels": self.labels[batch]})

    def batch_loss(self, batch: np.ndarray) -> torch.Tensor:
        return self.loaded.loss(self._batch(batch))

    def evaluate(self, indices: np.ndarray) -> dict[str, Any]:
        self.model.eval()
        scorer = self.loaded.scorer()
        with torch.no_grad():
            scorer.add(self._batch(indices))
        scores = scorer.metrics()
        return {"validation_loss": scores["loss"], "validation_accuracy": scores["accuracy"]}


class TextToTextTask(TorchTask):
    default_learning_rate = 1e-3
    default_optimizer = "adamw"

    def __init__(
        self,
        model: ModelRequest,
        pairs: PairData,
        *,
        max_source_length: int,
        max_target_length: int,
        num_beams: int,
        eval_samples: int,
        seed: int,
        device: torch.device,
        local_root: Path | None = None,
    ) -> None:
        self.pairs = pairs
        self.loaded = load_model(model, seed=seed, local_root=local_root, device=device)
        self.tokenizer = self.loaded.companion
        self.num_beams = num_beams
        self.eval_samples = eval_samples
        self.max_target_length = max_target_length
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise ValueError("the tokenizer has no padding token")
        self.pad = pad
        # Tokenised once, in two batched calls, when the host starts.
        self.sources = self.tokenizer(
            list(self.pairs.inputs), truncation=True, max_length=max_source_length
        )["input_ids"]
        targets = self.tokenizer(
            list(self.pairs.targets), truncation=True, max_length=max_target_length
        )["input_ids"]
        self.targets = [self._ending(ids, max_target_length) for ids in targets]

    def _ending(self, ids: list[int], limit: int) -> list[int]:
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids[: limit - 1], eos]  # the model must learn where an answer ends
        return ids

    @property
    def examples(self) -> int:
        return len(self.pairs)

    @property
    def partition_labels(self) -> np.ndarray | None:
        return self.pairs.kind_labels()

    @property
    def num_classes(self) -> int:
        labels = self.partition_labels
        return int(labels.max()) + 1 if labels is not None else 0

    def _padded(self, rows: list[list[int]], fill: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [fill] * (width - len(r)) for r in rows], device=self.device)

    def _batch(self, batch: np.ndarray) -> dict[str, Any]:
        sources = [self.sources[i] for i in batch]
        input_ids = self._padded(sources, self.pad)
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != self.pad).long(),
            "labels": self._padded([self.targets[i] for i in batch], -100),
            "targets": [self.pairs.targets[i] for i in batch],
        }

    def batch_loss(self, batch: np.ndarray) -> torch.Tensor:
        return self.loaded.loss(self._batch(batch))

    def evaluate(self, indices: np.ndarray, batch_size: int = 32) -> dict[str, Any]:
        """Loss and perplexity on every validation pair; exact match of generated answers on
        the first ``eval_samples``, with three of them to show."""
        self.model.eval()
        options = PredictOptions(
            num_beams=self.num_beams,
            max_new_tokens=self.max_target_length,
            generate_at_most=self.eval_samples,
        )
        scorer = self.loaded.scorer(options)
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                scorer.add(self._batch(indices[start : start + batch_size]))
        scores = scorer.metrics()
        return {
            "validation_loss": scores["loss"],
            "validation_perplexity": scores["perplexity"],
            "validation_exact_match": scores["exact_match"],
            "samples": scores["examples"],
        }
