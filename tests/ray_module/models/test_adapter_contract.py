"""Every model type's adapter through the same cases, as the strategy contract suite does for
modes: the loss of a batch trains, scores add up over batches, predictions come one row per
sample, and what is saved loads back, through the registry, to the same model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from protocol.model_sizes import OVERRIDE_LIMITS
from protocol.run import ModelRequest
from ray_module.errors import ModelError
from ray_module.models.contract import DataFit, Model, PredictOptions
from ray_module.models.registry import ADAPTERS, adapter_for, load_model

TEXTS = ["the cat sat", "a dog ran far", "hello there", "blue sky day"]


def padded(rows: list[list[int]], fill: int) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.array([r + [fill] * (width - len(r)) for r in rows], dtype=np.int64)


def text_batch(model: Model) -> dict[str, Any]:
    tokenizer = model.companion
    ids = padded(tokenizer(TEXTS)["input_ids"], tokenizer.pad_token_id)
    lengths = [len(r) for r in tokenizer(TEXTS)["input_ids"]]
    mask = np.array([[1] * n + [0] * (ids.shape[1] - n) for n in lengths], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def pair_batch(model: Model) -> dict[str, Any]:
    tokenizer = model.companion
    inputs = tokenizer(TEXTS)["input_ids"]
    ids = padded(inputs, tokenizer.pad_token_id)
    targets = [text.upper() for text in TEXTS]
    labels = padded([[*r, tokenizer.eos_token_id] for r in tokenizer(targets)["input_ids"]], -100)
    return {
        "input_ids": ids,
        "attention_mask": (ids != tokenizer.pad_token_id).astype(np.int64),
        "labels": labels,
        "targets": targets,
    }


def labelled_batch(model: Model) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "features": rng.normal(size=(12, 4)).astype(np.float32),
        "labels": np.arange(12, dtype=np.int64) % 3,
    }


def characters_batch(model: Model) -> dict[str, Any]:
    vocabulary = model.companion.vocabulary
    rows = [[vocabulary.index(c) for c in text.ljust(13)[:13]] for text in TEXTS]
    return {"ids": np.array(rows, dtype=np.int64)}


@dataclass(frozen=True)
class Case:
    request: ModelRequest
    fit: DataFit
    batch: Callable[[Model], dict[str, Any]]
    scores: frozenset[str]  # what the scorer reports, at least
    row: frozenset[str]  # what a prediction row holds, at least
    bad_override: dict[str, Any]


CASES = {
    "simple_transformer": Case(
        ModelRequest("simple_transformer", "tiny-gpt2", None, {"n_layer": 1, "n_embd": 32}),
        DataFit(),
        text_batch,
        frozenset({"loss", "perplexity", "tokens", "samples"}),
        frozenset({"input", "output"}),
        {"n_embd": 30, "n_head": 4},
    ),
    "text_to_text": Case(
        ModelRequest("text_to_text", "tiny-t5", None, {"layers": 1, "d_model": 32}),
        DataFit(),
        pair_batch,
        frozenset({"loss", "perplexity", "exact_match", "samples", "examples"}),
        frozenset({"input", "output"}),
        {"vocab": 3},
    ),
    "classifier": Case(
        ModelRequest("classifier", "mlp", None, {"hidden_size": 16}),
        DataFit(input_shape=(4,), num_classes=3, class_names=("a", "b", "c")),
        labelled_batch,
        frozenset({"loss", "accuracy", "per_class", "confusion_matrix", "samples"}),
        frozenset({"label", "probability", "top_k"}),
        {"hidden_size": 0},
    ),
    "char_rnn": Case(
        ModelRequest("char_rnn", "rnn", None, {"hidden_size": 16}),
        DataFit(vocabulary="\ufffd " + "".join(sorted(set("".join(TEXTS)) - {" "}))),
        characters_batch,
        frozenset({"loss", "perplexity", "bits_per_character"}),
        frozenset({"input", "output"}),
        {"layers": 2},
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def loaded(case: Case, **changes: Any) -> Model:
    """The case's model in evaluation mode (no dropout), so equal weights score equally."""
    model = load_model(case.request, fit=case.fit, seed=3, **changes)
    model.network.eval()
    return model


def test_every_model_type_the_protocol_knows_has_an_adapter() -> None:
    assert set(ADAPTERS) == set(OVERRIDE_LIMITS) == set(CASES)
    for model_type in ADAPTERS:
        assert adapter_for(model_type).model_type == model_type
    with pytest.raises(ModelError, match="unknown model type 'rnn'"):
        adapter_for("rnn")


def test_the_loss_of_a_batch_trains_the_model(case: Case) -> None:
    model = loaded(case)
    batch = model.batch(case.batch(model))
    first = model.loss(batch)
    assert first.ndim == 0 and torch.isfinite(first)
    optimizer = torch.optim.Adam(model.network.parameters(), lr=0.01)
    for _ in range(15):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    assert float(model.loss(batch).detach()) < 0.8 * float(first.detach())


def test_the_same_seed_builds_the_same_model(case: Case) -> None:
    one, two = loaded(case), loaded(case)
    batch = case.batch(one)
    with torch.no_grad():
        first, second = one.loss(one.batch(batch)), two.loss(two.batch(batch))
    assert float(first) == pytest.approx(float(second))


def test_scores_over_batches_weigh_every_sample(case: Case) -> None:
    model = loaded(case)
    arrays = case.batch(model)
    half = len(next(iter(arrays.values()))) // 2
    scorer = model.scorer(PredictOptions(max_new_tokens=4))
    with torch.no_grad():
        scorer.add(model.batch({k: v[:half] for k, v in arrays.items()}))
        scorer.add(model.batch({k: v[half:] for k, v in arrays.items()}))
        whole = float(model.loss(model.batch(arrays)))
    scores = scorer.metrics()
    assert case.scores <= set(scores)
    assert scores["samples"] == 2 * half
    # One pass over two halves scores like the whole (token-weighted where tokens differ).
    assert scores["loss"] == pytest.approx(whole, rel=0.05)


def test_predictions_come_one_row_per_sample(case: Case) -> None:
    model = loaded(case)
    arrays = case.batch(model)
    options = PredictOptions(top_k=2, max_new_tokens=3)
    with torch.no_grad():
        rows = model.predict(model.batch(arrays), options)
    assert len(rows) == len(next(iter(arrays.values())))
    for row in rows:
        assert case.row <= set(row)
        if "top_k" in row:
            assert len(row["top_k"]) == 2 and row["top_k"][0]["probability"] == row["probability"]


def test_what_is_saved_loads_back_by_its_directory(case: Case, tmp_path: Path) -> None:
    model = loaded(case)
    batch = case.batch(model)
    saved = tmp_path / "saved"
    model.save(saved)
    names = {p.name for p in saved.iterdir()}
    assert "config.json" in names and not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    request = ModelRequest(case.request.model_type, "saved", None, {})
    again = load_model(request, fit=case.fit, local_root=tmp_path)
    again.network.eval()
    with torch.no_grad():
        before, after = model.loss(model.batch(batch)), again.loss(again.batch(batch))
    assert float(after) == pytest.approx(float(before), abs=1e-5)


def test_a_bad_override_is_refused_with_a_reason(case: Case) -> None:
    request = ModelRequest(
        case.request.model_type, case.request.model_name, None, case.bad_override
    )
    with pytest.raises(ModelError):
        load_model(request, fit=case.fit)
