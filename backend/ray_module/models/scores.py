"""Scores of a model on batches: classifier accuracy, loss, per-class precision and recall
and the confusion matrix; language-model loss and perplexity; text-to-text exact match.
Accumulators, so the scores of a whole split come out of one pass over the stream."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ClassifierScore:
    num_classes: int
    class_names: tuple[str, ...] = ()
    loss_sum: float = 0.0
    count: int = 0
    confusion: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, losses: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> None:
        self.loss_sum += float(losses.sum())
        self.count += len(labels)
        np.add.at(self.confusion, (labels, predicted), 1)

    def metrics(self) -> dict[str, Any]:
        correct = int(np.trace(self.confusion))
        predicted = self.confusion.sum(axis=0)
        actual = self.confusion.sum(axis=1)
        diagonal = np.diag(self.confusion)
        names = list(self.class_names) or [str(i) for i in range(self.num_classes)]
        return {
            "accuracy": correct / max(1, self.count),
            "loss": self.loss_sum / max(1, self.count),
            "samples": self.count,
            "per_class": {
                name: {
                    "precision": float(diagonal[i] / predicted[i]) if predicted[i] else 0.0,
                    "recall": float(diagonal[i] / actual[i]) if actual[i] else 0.0,
                    "support": int(actual[i]),
                }
                for i, name in enumerate(names)
            },
            "confusion_matrix": self.confusion.tolist(),
        }


@dataclass
class LanguageModelScore:
    """Token-weighted loss: the perplexity of the whole split, not a mean of batch means."""

    loss_sum: float = 0.0
    tokens: int = 0
    samples: int = 0

    def add(self, mean_loss: float, tokens: int, samples: int) -> None:
        self.loss_sum += mean_loss * tokens
        self.tokens += tokens
        self.samples += samples

    def metrics(self) -> dict[str, Any]:
        loss = self.loss_sum / max(1, self.tokens)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "tokens": self.tokens,
            "samples": self.samples,
        }


@dataclass
class ExactMatchScore:
    matches: int = 0
    samples: int = 0
    loss: LanguageModelScore = field(default_factory=LanguageModelScore)

    def add(self, outputs: list[str], targets: list[str]) -> None:
        self.matches += sum(o.strip() == t.strip() for o, t in zip(outputs, targets, strict=True))
        self.samples += len(targets)

    def metrics(self) -> dict[str, Any]:
        return {
            "exact_match": self.matches / max(1, self.samples),
            "samples": self.samples,
            **{k: v for k, v in self.loss.metrics().items() if k in ("loss", "perplexity")},
        }
