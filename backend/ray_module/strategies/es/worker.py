"""An ES worker: one Ray actor on one placed node. It loads the corpus and builds the model
on its own machine, generates the shared noise table from the seed, and for each step
evaluates antithetic perturbations of the weights it is given. It returns only indices and
losses (scalars): never a weight vector. ``ESWorker`` is a plain class, wrapped with
``ray.remote`` at the edge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.run import DataRequest, ModelRequest, PublishTarget
from protocol.strategies.es import ESSettings
from ray_module.data.texts import load_texts
from ray_module.errors import DataError
from ray_module.models.char_rnn import (
    beam_search,
    encode,
    flat_parameters,
    sample_text,
    set_flat_parameters,
    vocabulary_of,
)
from ray_module.models.contract import DataFit
from ray_module.storage.directories import replace_directory, staging_for
from ray_module.storage.gateway_files import publish_directory
from ray_module.strategies.actor_pool import DeferredStart
from ray_module.strategies.es.noise import NoiseTable, pair_index
from ray_module.threads import use_cores
from ray_module.worker_logs import capture_worker_output

DEFAULT_VALIDATION_SPLIT = 0.1
VALIDATION_BATCHES = 4
DOCUMENT_BREAK = "\n\n"


@dataclass(frozen=True)
class WorkerConfig:
    job_id: int
    rank: int
    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    model: ModelRequest
    data: DataRequest
    settings: ESSettings


class ESEvaluator:
    """The corpus, the model and the noise table one node builds from the job's seed, and
    the losses it gives: what a worker evaluates with, and what the runner replays a
    disputed result with (``strategies.es.verification``)."""

    def __init__(self, config: WorkerConfig) -> None:

        self.config = config
        self.settings = settings = config.settings
        use_cores(config.cpu_cores)
        from ray_module.models.registry import load_model

        texts = load_texts(config.data)
        sizes = {"hidden_size": settings.hidden_size, "num_layers": settings.num_layers}
        self.loaded = load_model(
            config.model,
            fit=DataFit(
                vocabulary=vocabulary_of(texts),
                sizes={k: v for k, v in sizes.items() if v is not None},
            ),
            seed=settings.seed,
            local_root=Path(config.data.data_root) if config.data.data_root else None,
        )
        self.model = self.loaded.network
        self.model.eval()
        stream = encode(DOCUMENT_BREAK.join(texts), self.model.config.vocabulary)
        fraction = config.data.validation_split or DEFAULT_VALIDATION_SPLIT
        cut = int(len(stream) * (1 - fraction))
        self.train, self.validation = stream[:cut], stream[cut:]
        window = settings.seq_len + 1
        if len(self.train) <= window or len(self.validation) <= window:
            raise DataError(
                f"the corpus has {len(stream)} characters, too few for seq_len "
                f"{settings.seq_len} with a validation split; add data or lower seq_len"
            )
        self.num_params = int(flat_parameters(self.model).size)
        self.noise = NoiseTable.create(settings.seed, self.num_params)

    def batch(self, batch_id: int, *, validation: bool = False) -> Any:
        """The step's text batch: chosen by (seed, batch_id), identical on every node."""
        import torch

        stream = self.validation if validation else self.train
        window = self.settings.seq_len + 1
        rng = np.random.default_rng([self.settings.seed, int(validation), batch_id])
        starts = rng.integers(0, len(stream) - window, self.settings.batch_size)
        return torch.from_numpy(np.stack([stream[s : s + window] for s in starts]))

    def loss_at(self, theta: np.ndarray, ids: Any) -> float:
        import torch

        set_flat_parameters(self.model, theta)
        with torch.no_grad():
            return float(self.loaded.loss({"ids": ids}))

    def pair_losses(self, theta: np.ndarray, ids: Any, index: int) -> tuple[float, float]:
        """The losses at theta plus and minus sigma times perturbation ``index``."""
        epsilon = self.noise.perturbation(index)
        sigma = self.settings.sigma
        plus = self.loss_at(theta + sigma * epsilon, ids)
        return plus, self.loss_at(theta - sigma * epsilon, ids)

    def replay(self, theta: np.ndarray, batch_id: int, indices: list[int]) -> np.ndarray:
        """The pairs ``indices`` evaluated again on the step's batch: [[plus, minus], ...]."""
        ids = self.batch(batch_id)
        return np.asarray([self.pair_losses(theta, ids, i) for i in indices], dtype=np.float32)


class ESWorker(DeferredStart):
    def __init__(self, config: WorkerConfig) -> None:
        capture_worker_output(config.job_id, f"es worker {config.rank} on node {config.node_id}")
        self.config = config
        self.settings = config.settings
        self.start_or_remember(self._load)

    def _load(self) -> None:
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
        return flat_parameters(self.model)

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
        self, step: int, theta: np.ndarray, batch_id: int, pairs: int | None, seconds: float | None
    ) -> dict[str, Any]:
        """Antithetic pairs for ``step``: ``pairs`` of them, or as many as fit in ``seconds``."""
        started = time.perf_counter()
        ids = self.batch(batch_id)
        center = self.loss_at(theta, ids)
        indices: list[int] = []
        losses: list[tuple[float, float]] = []
        k = 0
        while True:
            if pairs is not None and k >= pairs:
                break
            if seconds is not None and time.perf_counter() - started >= seconds and k > 0:
                break
            index = pair_index(step, self.config.rank, k)
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
        losses = [
            self.loss_at(theta, self.batch(b, validation=True)) for b in range(VALIDATION_BATCHES)
        ]
        set_flat_parameters(self.model, theta)
        prompt = self.model.config.vocabulary[1]
        return {
            "node_id": self.config.node_id,
            "metrics": {
                "validation_loss": float(np.mean(losses)),
                "sample_text": sample_text(self.model, prompt, sample_length, seed=0),
                "beam_text": beam_search(self.model, prompt, min(sample_length, 40)),
            },
            "seconds": time.perf_counter() - started,
        }

    def save_model(
        self, theta: np.ndarray, directory: str, publish: PublishTarget | None = None
    ) -> str:
        set_flat_parameters(self.model, theta)
        target = Path(directory)
        staging = staging_for(target)
        self.loaded.save(staging)
        replace_directory(staging, target)
        publish_directory(publish, "model", target)  # from this node, where it was written
        return str(target)
