"""The data stage: a loader actor on a CPU node reads the job's data once, then turns lists
of sample ids into ready batches (decode, augment or tokenise, collate), timing the CPU it
spends on each so its node's owner is credited for exactly the work the trainer consumed.

A plain class (unit-testable without Ray), wrapped with ``ray.remote`` by ``run``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.run import DataRequest, ModelRequest
from ray_module.errors import DataError
from ray_module.strategies.actor_pool import DeferredStart
from ray_module.worker_logs import capture_worker_output

LABELLED = "classifier"
TEXT = "simple_transformer"
PAIRS = "text_to_text"


@dataclass(frozen=True)
class LoaderConfig:
    node_id: int
    model_type: str
    data: DataRequest
    model: ModelRequest  # language models: whose tokenizer to use
    seq_len: int = 64
    seed: int = 0
    job_id: int = 0  # 0: not a job's loader (tests): its output is not captured
    number: int = 0  # which loader of the job
    augment: bool = False  # the job augments images: warm that path before the first batch


@dataclass(frozen=True)
class DataShape:
    """What the trainer needs to know of the data before the first batch."""

    size: int
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()


class BatchLoader(DeferredStart):
    def __init__(self, config: LoaderConfig) -> None:
        if config.job_id:
            capture_worker_output(config.job_id, f"loader {config.number} on node {config.node_id}")
        self.config = config
        self.tokenizer: Any = None
        self.start_or_remember(self._load)

    def _load(self) -> None:
        config = self.config
        root = Path(config.data.data_root) if config.data.data_root else None
        if config.model_type == LABELLED:
            from ray_module.data.examples import load_labelled

            self.labelled = load_labelled(config.data, config.data.target_column)
            self.shape = DataShape(
                len(self.labelled),
                self.labelled.num_classes,
                self.labelled.input_shape,
                self.labelled.class_names,
            )
            if config.augment and self.labelled.features.ndim == 4:
                # scipy's import (about half a second) and the first transform are paid
                # here, while the trainer starts, not by the trainer waiting for batch 0.
                augment_images(self.labelled.features[:1], np.random.default_rng(0))
        elif config.model_type == TEXT:
            from ray_module.data.texts import load_texts
            from ray_module.models.causal_lm import load_causal_lm_tokenizer

            self.texts = load_texts(config.data)
            self.tokenizer = load_causal_lm_tokenizer(config.model, local_root=root)
            self.shape = DataShape(len(self.texts))
        elif config.model_type == PAIRS:
            from ray_module.data.examples import load_pairs
            from ray_module.models.text_to_text import load_text_to_text_tokenizer

            self.pairs = load_pairs(config.data, config.data.text_column, config.data.target_column)
            self.tokenizer = load_text_to_text_tokenizer(config.model, local_root=root)
            self.shape = DataShape(len(self.pairs))
        else:
            raise DataError(f"the split pipeline cannot load data for {config.model_type!r}")

    def describe(self) -> DataShape:
        self.check_started()
        return self.shape

    def batch(self, epoch: int, index: int, ids: np.ndarray, augment: bool) -> dict[str, Any]:
        """One ready batch: its arrays, its sample ids, and what making it cost here."""
        cpu, wall = time.process_time(), time.perf_counter()
        if self.config.model_type == LABELLED:
            arrays = self._images(epoch, index, ids, augment)
        elif self.config.model_type == TEXT:
            arrays = self._texts(ids)
        else:
            arrays = self._pairs(ids)
        arrays["ids"] = np.asarray(ids, dtype=np.int64)
        arrays["node_id"] = self.config.node_id
        arrays["cpu_s"] = time.process_time() - cpu
        arrays["wall_s"] = time.perf_counter() - wall
        arrays["nbytes"] = sum(v.nbytes for v in arrays.values() if isinstance(v, np.ndarray))
        return arrays

    def _images(self, epoch: int, index: int, ids: np.ndarray, augment: bool) -> dict[str, Any]:
        features = self.labelled.features[ids]
        if augment and features.ndim == 4:
            # Seeded by (seed, epoch, batch): the same batch is augmented the same way on any
            # loader and in any attempt, so a resumed run trains on what it would have.
            rng = np.random.default_rng((self.config.seed, epoch, index))
            features = augment_images(features, rng)
        return {"features": features.astype(np.float32), "labels": self.labelled.labels[ids]}

    def _texts(self, ids: np.ndarray) -> dict[str, Any]:
        encoded = self.tokenizer(
            [self.texts[i] for i in ids],
            max_length=self.config.seq_len,
            truncation=True,
            padding="max_length",
            return_tensors="np",
        )
        return {
            "input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64),
        }

    def _pairs(self, ids: np.ndarray) -> dict[str, Any]:
        inputs = [self.pairs.inputs[i] for i in ids]
        targets = [self.pairs.targets[i] for i in ids]
        source = self.tokenizer(
            inputs, max_length=self.config.seq_len, truncation=True, padding="longest",
            return_tensors="np",
        )  # fmt: skip
        target = self.tokenizer(
            text_target=targets, max_length=self.config.seq_len, truncation=True,
            padding="longest", return_tensors="np",
        )  # fmt: skip
        labels = np.where(target["attention_mask"] == 1, target["input_ids"], -100)
        return {
            "input_ids": source["input_ids"].astype(np.int64),
            "attention_mask": source["attention_mask"].astype(np.int64),
            "labels": labels.astype(np.int64),
            "targets": np.asarray(targets, dtype=object).astype(str),
        }


def augment_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random affine shifts (up to a sixteenth of the side), rotations (up to 8 degrees) and
    Gaussian noise, per image: the CPU work that makes a data stage worth its own node."""
    from scipy import ndimage

    out = np.empty_like(images)
    height, width = images.shape[-2:]
    low, high = float(images.min()), float(images.max())  # pixels in [0, 1] or [0, 255]
    for i, image in enumerate(images):
        angle = np.deg2rad(rng.uniform(-8, 8))
        shift = rng.uniform(-0.0625, 0.0625, size=2) * (height, width)
        cos, sin = np.cos(angle), np.sin(angle)
        matrix = np.array([[cos, -sin], [sin, cos]])
        centre = np.array([(height - 1) / 2, (width - 1) / 2])
        offset = centre - matrix @ centre - shift
        for channel in range(image.shape[0]):
            out[i, channel] = ndimage.affine_transform(
                image[channel], matrix, offset=offset, order=1, mode="constant", cval=low
            )
    out += rng.normal(0.0, 0.02 * (high - low), size=out.shape).astype(out.dtype)
    return np.clip(out, low, high)
