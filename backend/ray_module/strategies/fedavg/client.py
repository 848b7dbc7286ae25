"""A client host: one Ray actor on one placed node, serving one or more federated clients.

Each host loads the job's data on its own machine and computes the same partition from the
seed, keeping only its clients' shards (indices) and the shared validation split. ``fit``
takes the global weights (a Ray object reference, fetched once per node) and returns a plain
dict of numpy arrays and numbers. ``ClientHost`` is a plain class; the strategy wraps it with
``ray.remote`` at the edge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.run import DataRequest, ModelRequest, PublishTarget
from protocol.strategies.fedavg import CLIENT_PLACEHOLDER, FedAvgSettings
from ray_module.data.examples import LabelledData, PairData, load_labelled, load_pairs
from ray_module.errors import DataError, StartupError
from ray_module.storage.directories import replace_directory, staging_for
from ray_module.storage.gateway_files import publish_directory
from ray_module.strategies.actor_pool import DeferredStart
from ray_module.strategies.fedavg.partition import (
    dirichlet_partition,
    iid_partition,
    label_histogram,
    split_validation,
)
from ray_module.threads import use_cores
from ray_module.worker_logs import capture_worker_output

# The tasks import torch: the runner imports this module to start its hosts, before it
# needs torch (if ever), so they are imported where a host builds or trains one.
if TYPE_CHECKING:
    from ray_module.strategies.fedavg.tasks import TorchTask

DEFAULT_VALIDATION_SPLIT = 0.1


@dataclass(frozen=True)
class HostConfig:
    job_id: int
    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    clients: tuple[int, ...]  # the client indices this host serves
    model: ModelRequest
    data: DataRequest
    settings: FedAvgSettings
    # The runner's own host, refereeing a disputed replay: its output stays the runner's.
    referee: bool = False


def load_examples(config: HostConfig, client: int | None = None) -> LabelledData | PairData:
    """The job's examples; with ``client``, that client's own file (``{client}`` in the
    path), read on this host's machine."""
    request = config.data
    if client is not None:
        path = request.path or ""
        if CLIENT_PLACEHOLDER not in path:
            raise DataError(f"a node-local path needs {CLIENT_PLACEHOLDER} in it, got {path!r}")
        request = replace(request, path=path.replace(CLIENT_PLACEHOLDER, str(client)))
    if config.model.model_type == "classifier":
        return load_labelled(request, request.target_column)
    if config.model.model_type == "text_to_text":
        return load_pairs(request, request.text_column, request.target_column)
    raise StartupError(f"fedavg cannot train model type {config.model.model_type!r}")


def build_task(
    config: HostConfig, settings: FedAvgSettings, examples: LabelledData | PairData
) -> TorchTask:
    from ray_module.strategies.fedavg.tasks import ClassifierTask, TextToTextTask, pick_device

    model = config.model
    device = pick_device(config.gpu)
    # Saved model directories are named relative to the data root, like data files.
    root = Path(config.data.data_root) if config.data.data_root else None
    if isinstance(examples, LabelledData):
        return ClassifierTask(
            model,
            examples,
            hidden_size=settings.hidden_size,
            seed=settings.seed,
            device=device,
            local_root=root,
        )
    return TextToTextTask(
        model,
        examples,
        max_source_length=settings.max_source_length,
        max_target_length=settings.max_target_length,
        num_beams=settings.num_beams,
        eval_samples=settings.eval_samples,
        seed=settings.seed,
        device=device,
        local_root=root,
    )


def class_order(name: str) -> tuple[int, int, str]:
    """Numeric class names in numeric order ("2" before "10"), then the others."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def merge_client_examples(
    parts: dict[int, LabelledData | PairData],
    class_names: list[str],
    validation_split: float,
    seed: int,
) -> tuple[LabelledData | PairData, dict[int, np.ndarray], np.ndarray]:
    """Node-local data: each client's own examples, one after another, with labels mapped onto
    the federation's classes; each client holds out its own validation share."""
    shards: dict[int, np.ndarray] = {}
    validation: list[np.ndarray] = []
    offset = 0
    for client, part in sorted(parts.items()):
        train, held_out = split_validation(len(part), validation_split, seed + client)
        shards[client] = np.sort(train) + offset
        validation.append(np.sort(held_out) + offset)
        offset += len(part)
    ordered = [part for _, part in sorted(parts.items())]
    if isinstance(ordered[0], PairData):
        merged: LabelledData | PairData = PairData(
            tuple(text for part in ordered for text in part.inputs),
            tuple(text for part in ordered for text in part.targets),
        )
    else:
        shapes = {part.input_shape for part in ordered}
        if len(shapes) != 1:
            raise DataError(f"clients' files have features of different shapes: {sorted(shapes)}")
        index = {name: i for i, name in enumerate(class_names)}
        merged = LabelledData(
            features=np.concatenate([part.features for part in ordered]),
            labels=np.concatenate(
                [
                    np.asarray([index[part.class_names[label]] for label in part.labels])
                    for part in ordered
                ]
            ).astype(np.int64),
            num_classes=len(class_names),
            class_names=tuple(class_names),
        )
    return merged, shards, np.concatenate(validation)


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


class ClientHost(DeferredStart):
    def __init__(self, config: HostConfig) -> None:
        if not config.referee:
            capture_worker_output(config.job_id, f"fedavg host on node {config.node_id}")
        self.config = config
        self.settings = config.settings
        self.split = config.data.validation_split or DEFAULT_VALIDATION_SPLIT
        self.task: TorchTask | None = None
        self.shards: dict[int, np.ndarray] = {}
        self.every_shard: list[np.ndarray] = []
        self.start_or_remember(self._load)

    def _load(self) -> None:

        config = self.config
        use_cores(config.cpu_cores)
        if self.settings.partition == "node_local":
            # Each client's own file on this machine; the model waits for the federation's
            # classes (build), which only the server can know.
            self.local = {c: load_examples(config, c) for c in config.clients}
        else:
            self.task = build_task(config, self.settings, load_examples(config))
            shards, self.validation = partition_shards(self.task, self.settings, self.split)
            self.shards = {client: shards[client] for client in config.clients}
            self.every_shard = shards  # any client's, to replay another host's (verification)
            self.start_training()

    def ping(self) -> int:
        """Answers once the host has started (loaded its data); raises why it could not."""
        self.check_started()
        return self.config.node_id

    def local_classes(self) -> list[str]:
        """The class names in this host's node-local files (none for text-to-text)."""
        names = {
            name
            for part in self.local.values()
            if isinstance(part, LabelledData)
            for name in part.class_names
        }
        return sorted(names, key=class_order)

    def build(self, class_names: list[str]) -> None:
        """Node-local data: build the model over the federation's classes."""
        merged, self.shards, self.validation = merge_client_examples(
            self.local, class_names, self.split, self.settings.seed
        )
        self.local = {}  # merged now: do not hold the data twice
        self.task = build_task(self.config, self.settings, merged)
        self.start_training()

    def start_training(self) -> None:
        assert self.task is not None
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
        return self.train_client(self.shards[client], client, round_number, weights)

    def replay_fit(
        self, client: int, round_number: int, weights: list[np.ndarray]
    ) -> dict[str, Any]:
        """Another host's client trained again here, as it should have been (verified
        credit): the shard is the same on every host, from the job's seed."""
        if not 0 <= client < len(self.every_shard):
            raise ValueError(f"client {client} cannot be replayed here (node-local data)")
        return self.train_client(self.every_shard[client], client, round_number, weights)

    def train_client(
        self, shard: np.ndarray, client: int, round_number: int, weights: list[np.ndarray]
    ) -> dict[str, Any]:
        from ray_module.strategies.fedavg.tasks import LocalTraining

        self.task.set_weights(weights)
        result = self.task.train(
            shard,
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
            "examples": len(self.validation),
            "seconds": time.perf_counter() - started,
        }

    def save_model(
        self, weights: list[np.ndarray], directory: str, publish: PublishTarget | None = None
    ) -> str:
        self.task.set_weights(weights)
        target = Path(directory)
        staging = staging_for(target)
        self.task.save(staging)
        replace_directory(staging, target)
        publish_directory(publish, "model", target)  # from this node, where it was written
        return str(target)
