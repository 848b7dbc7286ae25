"""An ES worker: one Ray actor on one placed node. It loads the corpus and builds the model
on its own machine, generates the shared noise table from the seed, and for each step
evaluates antithetic perturbations of the weights it is given. It returns only indices and
losses (scalars): never a weight vector. ``ESWorker`` is a plain class, wrapped with
``ray.remote`` at the edge.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol.run import PublishTarget
from ray_module.storage.gateway_files import publish_directory
from ray_module.strategies.actor_pool import DeferredStart
from ray_module.strategies.es.noise import PAIRS_PER_SLOT
from ray_module.strategies.es.worker_config import WorkerConfig
from ray_module.worker_logs import capture_worker_output


class ESWorker(DeferredStart):
    def __init__(self, config: WorkerConfig) -> None:
        capture_worker_output(config.job_id, f"es worker {config.rank} on node {config.node_id}")
        self.config = config
        self.settings = config.settings
        self.start_or_remember(self._load)

    def _load(self) -> None:
        # Here, not at the top: the runner imports this class to start workers, and torch
        # (through the evaluator) would cost it a second before the first one starts.
        from ray_module.strategies.es.evaluator import ESEvaluator

        self.evaluator = evaluator = ESEvaluator(self.config)
        self.loaded, self.model = evaluator.loaded, evaluator.model
        self.train, self.validation = evaluator.train, evaluator.validation
        self.num_params, self.noise = evaluator.num_params, evaluator.noise

    def info(self) -> dict[str, Any]:
        """What this worker built; raises why it could not start."""
        self.check_started()
        return {
            "rank": self.config.rank,
            "node_id": self.config.node_id,
            "num_params": self.num_params,
            "vocab_size": self.model.config.vocab_size,
            "train_characters": int(self.train.size),
            "noise_digest": self.noise.digest(),
        }

    def initial_parameters(self) -> np.ndarray:
        return self.evaluator.initial_parameters()

    def batch(self, batch_id: int, *, validation: bool = False) -> Any:
        return self.evaluator.batch(batch_id, validation=validation)

    def loss_at(self, theta: np.ndarray, ids: Any) -> float:
        return self.evaluator.loss_at(theta, ids)

    def replay(self, theta: np.ndarray, batch_id: int, indices: list[int]) -> dict[str, Any]:
        """Another node's sampled pairs, evaluated here (verified credit)."""
        started = time.perf_counter()
        losses = self.evaluator.replay(theta, batch_id, indices)
        return {"losses": losses, "seconds": time.perf_counter() - started}

    def evaluate(
        self,
        first_index: int,
        theta: np.ndarray,
        batch_id: int,
        pairs: int | None,
        seconds: float | None,
    ) -> dict[str, Any]:
        """Antithetic pairs ``first_index``, ``first_index + 1``, ...: ``pairs`` of them, or
        as many as fit in ``seconds`` (at most a slot's ``PAIRS_PER_SLOT``)."""
        started = time.perf_counter()
        ids = self.batch(batch_id)
        center = self.loss_at(theta, ids)
        indices: list[int] = []
        losses: list[tuple[float, float]] = []
        k = 0
        while True:
            if k >= (PAIRS_PER_SLOT if pairs is None else pairs):
                break
            if seconds is not None and time.perf_counter() - started >= seconds and k > 0:
                break
            index = first_index + k
            indices.append(index)
            losses.append(self.evaluator.pair_losses(theta, ids, index))
            k += 1
        return {
            "rank": self.config.rank,
            "node_id": self.config.node_id,
            "indices": np.asarray(indices, dtype=np.int64),
            "losses": np.asarray(losses, dtype=np.float32),
            "center_loss": center,
            "seconds": time.perf_counter() - started,
        }

    def validate(self, theta: np.ndarray, sample_length: int) -> dict[str, Any]:
        """Validation loss on fixed held-out batches, and generated text."""
        started = time.perf_counter()
        metrics = self.evaluator.validate(theta, sample_length)
        return {
            "node_id": self.config.node_id,
            "metrics": metrics,
            "seconds": time.perf_counter() - started,
        }

    def save_model(
        self, theta: np.ndarray, directory: str, publish: PublishTarget | None = None
    ) -> str:
        target = Path(directory)
        self.evaluator.save(theta, target)
        publish_directory(publish, "model", target)  # from this node, where it was written
        return str(target)
