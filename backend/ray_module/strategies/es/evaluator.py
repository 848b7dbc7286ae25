"""What an ES worker evaluates with: the corpus, the model and the noise table one node
builds from the job's seed, and the losses it gives. The runner replays a disputed result
with one too (``strategies.es.verification``). Kept apart from the worker's actor class
(``worker``) because it imports torch: the runner starts its workers before it needs this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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
from ray_module.strategies.es.noise import NoiseTable
from ray_module.strategies.es.worker_config import WorkerConfig
from ray_module.threads import use_cores

DEFAULT_VALIDATION_SPLIT = 0.1
VALIDATION_BATCHES = 4
DOCUMENT_BREAK = "\n\n"


class ESEvaluator:
    """One node's corpus, model and noise table, built from the job's seed."""

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

    def initial_parameters(self) -> np.ndarray:
        return flat_parameters(self.model)

    def validate(self, theta: np.ndarray, sample_length: int) -> dict[str, Any]:
        """Validation loss on fixed held-out batches, and generated text."""
        losses = [
            self.loss_at(theta, self.batch(b, validation=True)) for b in range(VALIDATION_BATCHES)
        ]
        set_flat_parameters(self.model, theta)
        prompt = self.model.config.vocabulary[1]
        return {
            "validation_loss": float(np.mean(losses)),
            "sample_text": sample_text(self.model, prompt, sample_length, seed=0),
            "beam_text": beam_search(self.model, prompt, min(sample_length, 40)),
        }

    def save(self, theta: np.ndarray, target: Path) -> None:
        set_flat_parameters(self.model, theta)
        staging = staging_for(target)
        self.loaded.save(staging)
        replace_directory(staging, target)
