"""The ``char_rnn`` model (preset ``rnn``): a character-level language model with stacked tanh
RNN layers, its vocabulary, flat-parameter access for evolution strategies, sampling and beam
search, and its save format (safetensors + JSON, never a pickle)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protocol.model_sizes import allowed_overrides
from protocol.run import ModelRequest
from ray_module.errors import ModelError
from ray_module.models.contract import Batch, DataFit, Model, ModelAdapter, PredictOptions
from ray_module.models.scores import LanguageModelScore
from ray_module.models.sources import local_model_directory, preset_overrides

CHAR_RNN_TYPE = "char_rnn"
PRESET = "rnn"
CONFIG_FILE = "char_rnn_config.json"
WEIGHTS_FILE = "model.safetensors"
ALLOWED_OVERRIDES = allowed_overrides("char_rnn")
UNKNOWN = "\ufffd"  # characters outside the vocabulary map here


@dataclass(frozen=True)
class CharRNNConfig:
    vocabulary: str  # one character per token; token 0 is UNKNOWN
    hidden_size: int = 32
    num_layers: int = 1

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)


def vocabulary_of(texts: list[str] | tuple[str, ...], max_size: int = 256) -> str:
    """The corpus's most frequent characters (ties by code point), after UNKNOWN. The same
    corpus gives the same vocabulary on every machine."""
    counts: dict[str, int] = {}
    for text in texts:
        for char in text:
            counts[char] = counts.get(char, 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))[: max_size - 1]
    return UNKNOWN + "".join(sorted(ranked))


def encode(text: str, vocabulary: str) -> np.ndarray:
    index = {char: i for i, char in enumerate(vocabulary)}
    return np.fromiter((index.get(char, 0) for char in text), dtype=np.int64, count=len(text))


def decode(ids: list[int] | np.ndarray, vocabulary: str) -> str:
    return "".join(vocabulary[int(i)] for i in ids)


class CharRNN(nn.Module):
    def __init__(self, config: CharRNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rnn = nn.RNN(
            config.hidden_size,
            config.hidden_size,
            num_layers=config.num_layers,
            nonlinearity="tanh",
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(
        self, ids: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        output, hidden = self.rnn(self.embed(ids), hidden)
        return self.head(output), hidden

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean next-character cross-entropy (nats) over a batch of sequences."""
        logits, _ = self(ids[:, :-1])
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
        )


def build_char_rnn(config: CharRNNConfig, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(config)


def resolve_char_rnn(
    request: ModelRequest, vocabulary: str, *, hidden_size: int | None, num_layers: int | None,
    seed: int = 0, local_root: Path | None = None,
) -> CharRNN:  # fmt: skip
    """The ``rnn`` preset with the corpus's vocabulary, or a saved model (which keeps its own
    vocabulary)."""
    if request.model_type != CHAR_RNN_TYPE:
        raise ModelError(f"model type {request.model_type!r} is not {CHAR_RNN_TYPE!r}")
    name = request.model_name.strip()
    if name == PRESET:
        sizes = preset_overrides(request, ALLOWED_OVERRIDES)
        if hidden_size is not None:
            sizes.setdefault("hidden_size", hidden_size)
        if num_layers is not None:
            sizes.setdefault("num_layers", num_layers)
        return build_char_rnn(CharRNNConfig(vocabulary=vocabulary, **sizes), seed)
    directory = local_model_directory(name, local_root)
    if directory is None:
        raise ModelError(f"char_rnn model {name!r} is neither the 'rnn' preset nor a saved model")
    return load_char_rnn(directory)


def flat_parameters(model: nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu().numpy()


def set_flat_parameters(model: nn.Module, vector: np.ndarray) -> None:
    torch.nn.utils.vector_to_parameters(
        torch.from_numpy(np.require(vector, np.float32, ["C", "W"])), model.parameters()
    )


@torch.no_grad()
def sample_text(
    model: CharRNN, prompt: str, length: int, *, temperature: float = 0.8, seed: int = 0
) -> str:
    """Continue ``prompt`` by sampling ``length`` characters."""
    vocabulary = model.config.vocabulary
    generator = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(encode(prompt or vocabulary[1], vocabulary))[None, :]
    logits, hidden = model(ids)
    out: list[int] = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / max(temperature, 1e-4), dim=-1)
        next_id = int(torch.multinomial(probs, 1, generator=generator))
        out.append(next_id)
        logits, hidden = model(torch.tensor([[next_id]]), hidden)
    return decode(out, vocabulary)


@torch.no_grad()
def beam_search(model: CharRNN, prompt: str, length: int, *, beams: int = 4) -> str:
    """The most likely ``length``-character continuation found keeping ``beams`` candidates."""
    vocabulary = model.config.vocabulary
    ids = torch.from_numpy(encode(prompt or vocabulary[1], vocabulary))[None, :]
    logits, hidden = model(ids)
    candidates = [(0.0, [], logits[0, -1], hidden)]
    for _ in range(length):
        expanded = []
        for score, tokens, last_logits, state in candidates:
            log_probs = torch.log_softmax(last_logits, dim=-1)
            top = torch.topk(log_probs, min(beams, log_probs.shape[0]))
            for value, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                expanded.append((score + value, [*tokens, token], state))
        expanded.sort(key=lambda c: -c[0])
        candidates = []
        for score, tokens, state in expanded[:beams]:
            step_logits, step_state = model(torch.tensor([[tokens[-1]]]), state)
            candidates.append((score, tokens, step_logits[0, -1], step_state))
    return decode(candidates[0][1], vocabulary)


def save_char_rnn(model: CharRNN, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        str(directory / WEIGHTS_FILE),
    )
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2))
    (directory / "config.json").write_text(json.dumps({"model_type": "distlm-char-rnn"}))


def load_char_rnn(directory: Path) -> CharRNN:
    from safetensors.torch import load_file

    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
        model = CharRNN(
            CharRNNConfig(
                vocabulary=str(raw["vocabulary"]),
                hidden_size=int(raw["hidden_size"]),
                num_layers=int(raw["num_layers"]),
            )
        )
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except Exception as error:  # missing files, bad JSON, mismatched tensors
        raise ModelError(f"{str(directory)!r} is not a saved DistLM char_rnn: {error}") from error
    return model


def bits_per_character(loss_nats: float) -> float:
    return loss_nats / math.log(2)


class CharRNNScorer:
    """Character-weighted loss and perplexity, and bits per character."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.score = LanguageModelScore()

    def add(self, batch: Batch) -> None:
        ids = batch["ids"]
        self.score.add(float(self.model.loss(batch)), int(ids[:, 1:].numel()), len(ids))

    def metrics(self) -> dict[str, Any]:
        figures = self.score.metrics()
        return {**figures, "bits_per_character": bits_per_character(figures["loss"])}


class CharRNNAdapter(ModelAdapter):
    """Batches: ``ids``, rows of character ids; the model predicts each next character."""

    model_type = CHAR_RNN_TYPE
    batch_keys = ("ids",)

    def load(
        self, request: ModelRequest, *, fit: DataFit, seed: int, local_root: Path | None
    ) -> tuple[CharRNN, CharRNNConfig]:
        network = resolve_char_rnn(
            request,
            fit.vocabulary,
            hidden_size=fit.sizes.get("hidden_size"),
            num_layers=fit.sizes.get("num_layers"),
            seed=seed,
            local_root=local_root,
        )
        return network, network.config

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        ids = batch["ids"]
        logits, _ = model.network(ids[:, :-1])
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
        )

    def scorer(self, model: Model, options: PredictOptions) -> CharRNNScorer:
        return CharRNNScorer(model)

    def predict(self, model: Model, batch: Batch, options: PredictOptions) -> list[dict]:
        """Each row is a prompt; its continuation is the most likely one beam search finds."""
        vocabulary = model.companion.vocabulary
        rows = []
        for ids in batch["ids"]:
            prompt = decode(ids.tolist(), vocabulary)
            continuation = beam_search(
                model.unwrapped, prompt, options.max_new_tokens, beams=options.num_beams
            )
            rows.append({"input": prompt, "output": continuation})
        return rows

    def save(self, model: Model, directory: Path) -> None:
        save_char_rnn(model.unwrapped, directory)
