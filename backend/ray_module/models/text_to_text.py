"""Resolve a text-to-text ``model_config`` into an encoder-decoder model and its tokenizer.

Presets ``tiny-t5`` and ``tiny-bart`` are built from code with an offline byte-level
tokenizer; a local directory or a hub id (``t5-small``, ``facebook/bart-base``) loads through
``AutoModelForSeq2SeqLM`` as usual.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from protocol.model_sizes import allowed_overrides
from protocol.run import ModelRequest
from ray_module.errors import ModelError
from ray_module.hub import away_from_local_disk, require_hub_id
from ray_module.models.causal_lm import build_byte_tokenizer, decoded_inputs, saved_tokenizer
from ray_module.models.contract import (
    Batch,
    DataFit,
    Model,
    ModelAdapter,
    PredictOptions,
    first_rows,
)
from ray_module.models.scores import ExactMatchScore
from ray_module.models.sources import local_model_directory, preset_overrides

log = logging.getLogger(__name__)

TEXT_TO_TEXT_TYPE = "text_to_text"
PRESETS = ("tiny-t5", "tiny-bart")
PAD = "<pad>"
ALLOWED_OVERRIDES = allowed_overrides("text_to_text")
TINY_SIZES = {"d_model": 64, "layers": 2, "heads": 2, "ffn_dim": 128}
MAX_POSITIONS = 256


def load_text_to_text(
    request: ModelRequest, *, local_root: Path | None = None, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if request.model_type != TEXT_TO_TEXT_TYPE:
        raise ModelError(f"model type {request.model_type!r} is not {TEXT_TO_TEXT_TYPE!r}")
    name = request.model_name.strip()
    if name in PRESETS:
        return _build_preset(name, preset_overrides(request, ALLOWED_OVERRIDES), seed)
    directory = local_model_directory(name, local_root)
    source = str(directory) if directory is not None else name
    if directory is None:
        require_hub_id(name, "model_name", ModelError)
    # A local directory is an absolute path; a hub id is loaded away from local files.
    place = contextlib.nullcontext() if directory is not None else away_from_local_disk()
    try:
        with place:
            if request.pretrained is False:
                from transformers import AutoConfig

                model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(source))
            else:
                model = AutoModelForSeq2SeqLM.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as error:  # network, missing repo, not an encoder-decoder, bad files
        where = "local directory" if directory is not None else "the Hugging Face hub"
        raise ModelError(f"could not load {name!r} from {where}: {error}") from error
    log.info("loaded text-to-text model %s", source)
    return model, tokenizer


def load_text_to_text_tokenizer(
    request: ModelRequest, *, local_root: Path | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of the model ``request`` names, without its weights."""
    name = request.model_name.strip()
    if name in PRESETS:
        preset_overrides(request, ALLOWED_OVERRIDES)
        return _preset_tokenizer()
    return saved_tokenizer(name, local_root)


def _preset_tokenizer() -> PreTrainedTokenizerBase:
    tokenizer = build_byte_tokenizer()
    tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.model_max_length = MAX_POSITIONS
    return tokenizer


def _build_preset(
    name: str, overrides: dict[str, Any], seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch

    sizes = {**TINY_SIZES, **overrides}
    if sizes["d_model"] % sizes["heads"]:
        raise ModelError(f"d_model ({sizes['d_model']}) must be divisible by heads")
    tokenizer = _preset_tokenizer()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    if name == "tiny-t5":
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=sizes["d_model"],
            d_kv=sizes["d_model"] // sizes["heads"],
            d_ff=sizes["ffn_dim"],
            num_layers=sizes["layers"],
            num_decoder_layers=sizes["layers"],
            num_heads=sizes["heads"],
            pad_token_id=pad,
            eos_token_id=eos,
            decoder_start_token_id=pad,
        )
        return T5ForConditionalGeneration(config), tokenizer
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=sizes["d_model"],
        encoder_layers=sizes["layers"],
        decoder_layers=sizes["layers"],
        encoder_attention_heads=sizes["heads"],
        decoder_attention_heads=sizes["heads"],
        encoder_ffn_dim=sizes["ffn_dim"],
        decoder_ffn_dim=sizes["ffn_dim"],
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=pad,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=eos,
        forced_eos_token_id=eos,
    )
    return BartForConditionalGeneration(config), tokenizer


EXAMPLES_KEPT = 3  # (input, target, prediction) triples a score shows


def generated_texts(model: Model, batch: Batch, options: PredictOptions) -> list[str]:
    """Greedy or beam-search answers for the batch's inputs (an encoder-decoder takes the
    padded batch as it is: its encoder masks the padding)."""
    generated = model.unwrapped.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        num_beams=options.num_beams,
        max_new_tokens=options.max_new_tokens,
        do_sample=False,
    )
    return model.companion.batch_decode(generated, skip_special_tokens=True)


class TextToTextScorer:
    """Token-weighted loss and perplexity over every sample; exact match of generated
    answers over the first ``generate_at_most`` (all by default), with a few examples."""

    def __init__(self, model: Model, options: PredictOptions) -> None:
        self.model = model
        self.options = options
        self.score = ExactMatchScore()
        self.examples: list[dict[str, str]] = []

    def add(self, batch: Batch) -> None:
        tokens = int((batch["labels"] != -100).sum())
        loss = float(self.model.loss(batch))
        self.score.loss.add(loss, tokens, len(batch["input_ids"]))
        room = self.options.generate_at_most
        take = len(batch["input_ids"]) if room is None else max(0, room - self.score.samples)
        if not take or "targets" not in batch:
            return
        part = first_rows(batch, take)
        outputs = generated_texts(self.model, part, self.options)
        targets = [str(t) for t in part["targets"]]
        self.score.add(outputs, targets)
        inputs = decoded_inputs(self.model.companion, part)
        for text, target, output in zip(inputs, targets, outputs, strict=True):
            if len(self.examples) < EXAMPLES_KEPT:
                self.examples.append({"input": text, "target": target, "prediction": output})

    def metrics(self) -> dict[str, Any]:
        return {**self.score.metrics(), "examples": list(self.examples)}


class TextToTextAdapter(ModelAdapter):
    """Batches: ``input_ids`` and ``attention_mask`` of the inputs, ``labels`` (the target
    ids, padded with -100) and, for exact match, ``targets`` (the target texts)."""

    model_type = TEXT_TO_TEXT_TYPE
    batch_keys = ("input_ids", "attention_mask", "labels", "targets")

    def load(
        self, request: ModelRequest, *, fit: DataFit, seed: int, local_root: Path | None
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_text_to_text(request, local_root=local_root, seed=seed)

    def loss(self, model: Model, batch: Batch) -> Any:
        return model.network(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss

    def scorer(self, model: Model, options: PredictOptions) -> TextToTextScorer:
        return TextToTextScorer(model, options)

    def predict(self, model: Model, batch: Batch, options: PredictOptions) -> list[dict]:
        outputs = generated_texts(model, batch, options)
        inputs = decoded_inputs(model.companion, batch)
        return [{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)]

    def save(self, model: Model, directory: Path) -> None:
        model.unwrapped.save_pretrained(directory)
        model.companion.save_pretrained(directory)
