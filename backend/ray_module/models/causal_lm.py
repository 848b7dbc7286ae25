"""Resolve a job's ``model_config`` into a causal language model and its tokenizer.

A model name is one of three things, tried in this order:

- a built-in preset (``tiny-gpt2``): built from code with an offline byte-level tokenizer, so a
  job, a test or a worker without internet can still train something real;
- a local directory holding a saved model (``save_pretrained`` output with a config.json);
- a Hugging Face hub id (``gpt2``, ``distilgpt2``), loaded with the ordinary ``from_pretrained``.

Every failure surfaces as ``ModelError`` with a sentence a user can act on, so the gateway can
answer 422 instead of leaking a library traceback.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from protocol.model_sizes import allowed_overrides
from protocol.run import ModelRequest
from ray_module.errors import ModelError
from ray_module.hub import away_from_local_disk, require_hub_id
from ray_module.models.contract import Batch, DataFit, Model, ModelAdapter, PredictOptions
from ray_module.models.scores import LanguageModelScore
from ray_module.models.sources import (
    checked_overrides,
    local_model_directory,
    preset_overrides,
)

__all__ = [
    "CausalLMAdapter",
    "build_byte_tokenizer",
    "count_parameters",
    "load_causal_lm",
]

log = logging.getLogger(__name__)

CAUSAL_LM_TYPE = "simple_transformer"
END_OF_TEXT = "<|endoftext|>"

# The architecture knobs a job may turn. Anything else (vocab size, token ids, activation) is
# either derived from the tokenizer or not worth exposing, so it is refused rather than ignored.
ALLOWED_OVERRIDES = allowed_overrides("simple_transformer")

# Small enough to train on a laptop CPU in seconds, big enough to show the loss falling.
TINY_GPT2_DEFAULTS: dict[str, int] = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 256}

# Presets of the other model types, named so that a wrong pairing gets a helpful error instead
# of being mistaken for a hub id (and failing later with a network error).
OTHER_TYPE_PRESETS: dict[str, str] = {
    "tiny-t5": "text_to_text",
    "tiny-bart": "text_to_text",
    "mlp": "classifier",
    "cnn": "classifier",
    "rnn": "char_rnn",
}


def load_causal_lm(
    request: ModelRequest, *, local_root: Path | None = None, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build or load the model and tokenizer that ``request`` names.

    ``local_root`` anchors relative directory names; a relative name must stay inside it.
    A preset's initial weights follow ``seed``: the same on every machine.
    """
    if request.model_type != CAUSAL_LM_TYPE:
        raise ModelError(
            f"model type {request.model_type!r} is not supported here; "
            f"causal language models use {CAUSAL_LM_TYPE!r}"
        )
    name = request.model_name.strip()
    if not name:
        raise ModelError("model_name is empty")
    if name in OTHER_TYPE_PRESETS:
        raise ModelError(
            f"{name!r} is a preset for model type {OTHER_TYPE_PRESETS[name]!r}, "
            f"not {CAUSAL_LM_TYPE!r}; use 'tiny-gpt2'"
        )
    if name == "tiny-gpt2":
        torch.manual_seed(seed)
        return _build_tiny_gpt2(request)
    directory = local_model_directory(name, local_root)
    if directory is not None:
        return _load_local(directory, request)
    return _load_from_hub(name, request)


def load_causal_lm_tokenizer(
    request: ModelRequest, *, local_root: Path | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of the model ``request`` names, without its weights (a split job's CPU
    loaders tokenise; only the trainer needs the model)."""
    name = request.model_name.strip()
    if name == "tiny-gpt2":
        tokenizer = build_byte_tokenizer()
        sizes = {**TINY_GPT2_DEFAULTS, **preset_overrides(request, ALLOWED_OVERRIDES)}
        tokenizer.model_max_length = sizes["n_positions"]
        return tokenizer
    if name in OTHER_TYPE_PRESETS or not name:
        return load_causal_lm(request, local_root=local_root)[1]  # its error, as usual
    return _with_padding(saved_tokenizer(name, local_root))


def saved_tokenizer(name: str, local_root: Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model: a directory under the data root, or a hub id (read
    away from local disk)."""
    directory = local_model_directory(name, local_root)
    if directory is None:
        require_hub_id(name, "model_name", ModelError)
    source = str(directory) if directory is not None else name
    place = contextlib.nullcontext() if directory is not None else away_from_local_disk()
    try:
        with place:
            return AutoTokenizer.from_pretrained(source)
    except Exception as error:  # network, missing repo, offline mode, bad files
        raise ModelError(f"could not load the tokenizer of {name!r}: {error}") from error


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer that needs no download: one token per byte (id == byte value) plus
    ``<|endoftext|>`` (id 256) as end-of-text and padding.

    Byte-level means every string, in any script, encodes losslessly; with no merges the
    vocabulary is tiny, which keeps the embedding small for the presets.
    """
    byte_to_char = _gpt2_byte_to_char()
    vocab = {byte_to_char[byte]: byte for byte in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split and no prefix space: with no merges to learn, splitting words buys nothing,
    # and a prefix space would break decode(encode(s)) == s.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters; tied weights (GPT-2's embedding and head) count once."""
    return sum(parameter.numel() for parameter in model.parameters())


def _build_tiny_gpt2(request: ModelRequest) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    sizes = {**TINY_GPT2_DEFAULTS, **preset_overrides(request, ALLOWED_OVERRIDES)}
    if sizes["n_embd"] % sizes["n_head"] != 0:
        raise ModelError(
            f"n_embd ({sizes['n_embd']}) must be divisible by n_head ({sizes['n_head']})"
        )
    tokenizer = build_byte_tokenizer()
    tokenizer.model_max_length = sizes["n_positions"]
    end_of_text = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        pad_token_id=end_of_text,
        **sizes,
    )
    return GPT2LMHeadModel(config), tokenizer


def _load_local(
    directory: Path, request: ModelRequest
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        model = _model_from(str(directory), request)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except ModelError:
        raise
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, ...
        raise ModelError(
            f"could not load the model saved in {str(directory)!r}: {error}"
        ) from error
    log.info("loaded model from local directory %s", directory)
    return model, _with_padding(tokenizer)


def _load_from_hub(
    name: str, request: ModelRequest
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    require_hub_id(name, "model_name", ModelError)
    try:
        with away_from_local_disk():
            model = _model_from(name, request)
            tokenizer = AutoTokenizer.from_pretrained(name)
    except ModelError:
        raise
    except Exception as error:  # network, missing repo, gated repo, offline mode, bad config
        raise ModelError(f"could not load {name!r} from the Hugging Face hub: {error}") from error
    log.info("loaded model %s from the Hugging Face hub (pretrained=%s)", name, request.pretrained)
    return model, _with_padding(tokenizer)


def _model_from(source: str, request: ModelRequest) -> PreTrainedModel:
    """Pretrained weights by default; ``pretrained=False`` keeps the architecture only."""
    if request.pretrained is False:
        config = AutoConfig.from_pretrained(source)
        _apply_overrides(config, request.overrides)
        return AutoModelForCausalLM.from_config(config)
    if request.overrides:
        raise ModelError(
            "overrides change the architecture and cannot apply to pretrained weights; "
            "set pretrained to false to train the changed architecture from scratch"
        )
    return AutoModelForCausalLM.from_pretrained(source)


def _apply_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> None:
    for key, value in checked_overrides(overrides, ALLOWED_OVERRIDES).items():
        # Setting an attribute a config does not know would silently do nothing.
        if not hasattr(config, key):
            raise ModelError(f"a {config.model_type!r} model has no setting {key!r} to override")
        setattr(config, key, value)


def _with_padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """GPT-2 style tokenizers ship without a pad token; batching needs one, and padding with
    end-of-text is the usual choice because padded positions are masked out anyway."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _gpt2_byte_to_char() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, the one the ByteLevel
    pre-tokenizer applies: printable Latin-1 bytes map to themselves, the rest to 256 + n."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def predicted_tokens(batch: Batch) -> int:
    """How many next tokens the batch's loss is the mean over (padding predicts nothing)."""
    mask = batch.get("attention_mask")
    return int(mask[:, 1:].sum()) if mask is not None else int(batch["input_ids"][:, 1:].numel())


class LanguageModelScorer:
    """Token-weighted loss and perplexity over batches of text (``LanguageModelScore``)."""

    def __init__(self, model: Model, loss: Any) -> None:
        self.model = model
        self.loss_of = loss
        self.score = LanguageModelScore()

    def add(self, batch: Batch) -> None:
        mean = float(self.loss_of(self.model, batch))
        self.score.add(mean, predicted_tokens(batch), len(batch["input_ids"]))

    def metrics(self) -> dict[str, Any]:
        return self.score.metrics()


def decoded_inputs(tokenizer: PreTrainedTokenizerBase, batch: Batch) -> list[str]:
    mask = batch.get("attention_mask")
    rows = (
        batch["input_ids"]
        if mask is None
        else [r[m == 1] for r, m in zip(batch["input_ids"], mask, strict=True)]
    )
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


class CausalLMAdapter(ModelAdapter):
    """Batches: ``input_ids`` and, where rows are padded, ``attention_mask``; the model
    learns to predict each next token (padding masked out of the loss)."""

    model_type = CAUSAL_LM_TYPE
    batch_keys = ("input_ids", "attention_mask")

    def load(
        self, request: ModelRequest, *, fit: DataFit, seed: int, local_root: Path | None
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_causal_lm(request, local_root=local_root, seed=seed)

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        if mask is None:
            return model.network(input_ids=ids, labels=ids).loss
        labels = ids.masked_fill(mask == 0, -100)
        return model.network(input_ids=ids, attention_mask=mask, labels=labels).loss

    def scorer(self, model: Model, options: PredictOptions) -> LanguageModelScorer:
        return LanguageModelScorer(model, self.loss)

    def predict(self, model: Model, batch: Batch, options: PredictOptions) -> list[dict]:
        tokenizer, network = model.companion, model.unwrapped
        inputs = decoded_inputs(tokenizer, batch)
        mask = batch.get("attention_mask")
        rows = []
        for index, text in enumerate(inputs):
            ids = batch["input_ids"][index]
            prompt = (ids if mask is None else ids[mask[index] == 1])[None, :]
            # One row at a time: no padding side to get wrong for a decoder-only model.
            generated = network.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=options.max_new_tokens,
                num_beams=options.num_beams,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            output = tokenizer.decode(generated[0, prompt.shape[1] :], skip_special_tokens=True)
            rows.append({"input": text, "output": output})
        return rows

    def save(self, model: Model, directory: Path) -> None:
        model.unwrapped.save_pretrained(directory)
        model.companion.save_pretrained(directory)
