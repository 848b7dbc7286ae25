"""A client host: one Ray actor on one placed node, serving one or more federated clients.

Each host loads the job's data on its own machine and computes the same partition from the
seed, keeping only its clients' shards (indices) and the shared validation split. ``fit``
takes the global weights (a Ray object reference, fetched once per node) and returns a plain
dict of numpy arrays and numbers. ``ClientHost`` is a plain class; the strategy wraps it with
``ray.remote`` at the edge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ray_module.data_handler import DataRequest
from ray_module.federated.partition import (
    dirichlet_partition,
    iid_partition,
    label_histogram,
    split_validation,
)
from ray_module.federated.settings import FedAvgSettings
from ray_module.federated.tasks import (
    ClassifierTask,
    LocalTraining,
    TextToTextTask,
    TorchTask,
    pick_device,
)
from ray_module.model_sources import ModelRequest

DEFAULT_VALIDATION_SPLIT = 0.1


@dataclass(frozen=True)
class HostConfig:
    job_id: int
    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    clients: tuple[int, ...]  # the client indices this host serves
    model: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]


def build_task(config: HostConfig, settings: FedAvgSettings) -> TorchTask:
    model = ModelRequest(**config.model)
    data = DataRequest(**config.data)
    device = pick_device(config.gpu)
    if model.model_type == "classifier":
        return ClassifierTask(
            model,
            data,
            target_column=config.data.get("target_column"),
            hidden_size=settings.hidden_size,
            seed=settings.seed,
            device=device,
        )
    if model.model_type == "text_to_text":
        return TextToTextTask(
            model,
            data,
            text_column=config.data.get("text_column"),
            target_column=config.data.get("target_column"),
            max_source_length=settings.max_source_length,
            max_target_length=settings.max_target_length,
            num_beams=settings.num_beams,
            eval_samples=settings.eval_samples,
            seed=settings.seed,
            device=device,
        )
    raise ValueError(f"fedavg cannot train model type {model.model_type!r}")


def partition_shards(
    task: TorchTask, settings: FedAvgSettings, validation_split: float
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every client's shard and the validation indices: the same on every host."""
    train, validation = split_validation(task.examples, validation_split, settings.seed)
    if settings.partition == "dirichlet":
        labels = task.partition_labels
        if labels is None:
            raise ValueError(
                "partition 'dirichlet' needs labels (classes, or the task kind of "
                "synthetic-t2t); this dataset has none: use 'iid'"
            )
        shards = dirichlet_partition(
            train, labels[train], settings.clients, settings.dirichlet_alpha, settings.seed
        )
    else:
        shards = iid_partition(train, settings.clients, settings.seed)
    return shards, validation


class ClientHost:
    def __init__(self, config: HostConfig) -> None:
        import torch

        # Fractional CPU shares still get one thread; more cores, more threads.
        torch.set_num_threads(max(1, int(config.cpu_cores)))
        self.config = config
        self.settings = FedAvgSettings(**config.settings)
        self.task = build_task(config, self.settings)
        split = config.data.get("validation_split") or DEFAULT_VALIDATION_SPLIT
        shards, self.validation = partition_shards(self.task, self.settings, split)
        self.shards = {client: shards[client] for client in config.clients}
        self.learning_rate = self.settings.learning_rate or self.task.default_learning_rate
        self.optimizer = self.settings.client_optimizer or self.task.default_optimizer

    def ready(self) -> dict[str, Any]:
        """What this host serves: its node and each client's shard size and label counts."""
        labels = self.task.partition_labels
        return {
            "node_id": self.config.node_id,
            "clients": {
                client: {
                    "examples": len(shard),
                    "label_counts": (
                        label_histogram(labels[shard], self.task.num_classes)
                        if labels is not None
                        else None
                    ),
                }
                for client, shard in self.shards.items()
            },
        }

    def initial_weights(self) -> list[np.ndarray]:
        return self.task.get_weights()

    def fit(self, client: int, round_number: int, weights: list[np.ndarray]) -> dict[str, Any]:
        """Train ``client`` for one round from ``weights``; a plain dict comes back."""
        if client not in self.shards:
            raise ValueError(f"client {client} is not served by this host")
        self.task.set_weights(weights)
        result = self.task.train(
            self.shards[client],
            LocalTraining(
                epochs=self.settings.local_epochs,
                batch_size=self.settings.batch_size,
                learning_rate=self.learning_rate,
                optimizer=self.optimizer,
                proximal_mu=self.settings.proximal_mu,
                shuffle_seed=self.settings.seed * 1000 + round_number * 100 + client,
            ),
        )
        return {
            "client": client,
            "node_id": self.config.node_id,
            "weights": result.weights,
            "num_examples": result.num_examples,
            "train_loss": result.loss,
            "seconds": result.seconds,
        }

    def evaluate(self, weights: list[np.ndarray]) -> dict[str, Any]:
        started = time.perf_counter()
        self.task.set_weights(weights)
        metrics = self.task.evaluate(self.validation)
        return {
            "node_id": self.config.node_id,
            "metrics": metrics,
            "seconds": time.perf_counter() - started,
        }

    def save_model(self, weights: list[np.ndarray], directory: str) -> str:
        self.task.set_weights(weights)
        target = Path(directory)
        staging = target.with_name(target.name + ".tmp")
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        self.task.save(staging)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        staging.rename(target)
        return str(target)
