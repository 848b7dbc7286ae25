"""Model resolution: the offline preset and its byte tokenizer, local directories, and the hub
path's failure when there is no network (tests never download)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from protocol.run import DataRequest
from ray_module.data.texts import load_texts, pack_blocks, split_blocks
from ray_module.errors import ModelError
from ray_module.models.causal_lm import (
    ModelRequest,
    build_byte_tokenizer,
    count_parameters,
    load_causal_lm,
)
from tests.baselines import causal_lm_unigram

CAUSAL = "simple_transformer"
ROUND_TRIP_TEXTS = [
    "hello world",
    "  leading, double  and trailing spaces  ",
    "tabs\tand\nnew lines\r\n",
    "héllo wörld, ½ € ✓",
    "日本語のテキスト and emoji 🎉🐍",
    "",
]


def tiny(**overrides: int) -> ModelRequest:
    return ModelRequest(CAUSAL, "tiny-gpt2", overrides=dict(overrides))


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty cache. huggingface_hub reads HF_HUB_OFFLINE once, at import, so
    the environment variable alone does not reach an already imported library; without the
    patch a lookup retries DNS for about 20 s before failing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_byte_tokenizer_round_trips(text: str) -> None:
    tokenizer = build_byte_tokenizer()
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == list(text.encode("utf-8"))  # one token per byte, id == byte value
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_has_end_of_text_as_eos_and_pad() -> None:
    tokenizer = build_byte_tokenizer()
    assert len(tokenizer) == 257
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 256
    assert tokenizer.encode("a<|endoftext|>b", add_special_tokens=False) == [97, 256, 98]
    assert tokenizer.decode([97, 256, 98], skip_special_tokens=True) == "ab"


def test_byte_tokenizer_survives_save_and_load(tmp_path: Path) -> None:
    build_byte_tokenizer().save_pretrained(tmp_path)
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    for text in ROUND_TRIP_TEXTS:
        ids = reloaded.encode(text, add_special_tokens=False)
        assert ids == list(text.encode("utf-8"))
        assert reloaded.decode(ids) == text
    assert reloaded.eos_token_id == reloaded.pad_token_id == 256


def test_tiny_gpt2_preset_is_a_small_gpt2_sized_to_its_tokenizer() -> None:
    model, tokenizer = load_causal_lm(tiny())
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.vocab_size == len(tokenizer) == 257
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (2, 2, 64)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == model.config.n_positions == 256
    input_ids = torch.tensor([tokenizer.encode("def f(): pass")])
    logits = model(input_ids=input_ids).logits
    assert logits.shape == (1, input_ids.shape[1], 257)


def test_count_parameters_counts_tied_embeddings_once() -> None:
    model, _ = load_causal_lm(tiny())
    embedding = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embedding
    every_tensor = sum(tensor.numel() for tensor in model.state_dict().values())
    assert count_parameters(model) < every_tensor
    assert count_parameters(model) == sum(p.numel() for p in set(model.parameters()))


def test_overrides_change_the_architecture() -> None:
    base = count_parameters(load_causal_lm(tiny())[0])
    deeper, _ = load_causal_lm(tiny(n_layer=4))
    wider, _ = load_causal_lm(tiny(n_embd=128, n_head=4))
    longer, _ = load_causal_lm(tiny(n_positions=512))
    assert deeper.config.n_layer == 4
    assert count_parameters(deeper) > base
    assert count_parameters(wider) > count_parameters(deeper)
    assert count_parameters(longer) - base == 256 * 64  # 256 more position embeddings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vocab_size": 10}, "unknown model overrides"),
        ({"n_layers": 3}, "unknown model overrides"),
        ({"n_layer": 0}, "positive integer"),
        ({"n_layer": "2"}, "positive integer"),
        ({"n_layer": True}, "positive integer"),
        ({"n_embd": 65}, "divisible by n_head"),
    ],
)
def test_bad_overrides_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_causal_lm(ModelRequest(CAUSAL, "tiny-gpt2", overrides=overrides))


def test_preset_has_no_pretrained_weights() -> None:
    with pytest.raises(ModelError, match="no pretrained weights"):
        load_causal_lm(ModelRequest(CAUSAL, "tiny-gpt2", pretrained=True))


@pytest.mark.parametrize("model_type", ["text_to_text", "classifier", "char_rnn", "gpt"])
def test_other_model_types_are_refused(model_type: str) -> None:
    with pytest.raises(ModelError, match="not supported"):
        load_causal_lm(ModelRequest(model_type, "tiny-gpt2"))


def test_preset_of_another_type_gets_a_helpful_error() -> None:
    with pytest.raises(ModelError, match="text_to_text"):
        load_causal_lm(ModelRequest(CAUSAL, "tiny-t5"))


def test_saved_model_reloads_from_a_local_directory(tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(tiny())
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")

    by_relative_name = load_causal_lm(ModelRequest(CAUSAL, "saved"), local_root=tmp_path)
    by_absolute_path = load_causal_lm(ModelRequest(CAUSAL, str(tmp_path / "saved")))

    original = model.state_dict()
    for reloaded, reloaded_tokenizer in (by_relative_name, by_absolute_path):
        assert type(reloaded) is GPT2LMHeadModel
        for name, tensor in reloaded.state_dict().items():
            assert torch.equal(tensor, original[name]), name
        text = "héllo 🎉 saved"
        assert reloaded_tokenizer.encode(text) == tokenizer.encode(text)
        assert reloaded_tokenizer.decode(reloaded_tokenizer.encode(text)) == text
        assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id


def test_local_directory_without_pretrained_keeps_only_the_architecture(tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(tiny())
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")

    fresh, _ = load_causal_lm(ModelRequest(CAUSAL, "saved", pretrained=False), local_root=tmp_path)
    shallower, _ = load_causal_lm(
        ModelRequest(CAUSAL, "saved", pretrained=False, overrides={"n_layer": 1}),
        local_root=tmp_path,
    )
    assert count_parameters(fresh) == count_parameters(model)
    weight = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(fresh.state_dict()[weight], model.state_dict()[weight])
    assert shallower.config.n_layer == 1
    assert count_parameters(shallower) < count_parameters(model)
    with pytest.raises(ModelError, match="cannot apply to pretrained weights"):
        load_causal_lm(ModelRequest(CAUSAL, "saved", overrides={"n_layer": 1}), local_root=tmp_path)


def test_bad_local_directories_are_refused(tmp_path: Path) -> None:
    (tmp_path / "root" / "empty").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    root = tmp_path / "root"
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_causal_lm(ModelRequest(CAUSAL, "empty"), local_root=root)
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(ModelRequest(CAUSAL, str(tmp_path / "missing")))
    with pytest.raises(ModelError, match="outside the local model root"):
        load_causal_lm(ModelRequest(CAUSAL, "../outside"), local_root=root)
    with pytest.raises(ModelError, match="could not load the model saved in"):
        load_causal_lm(ModelRequest(CAUSAL, str(tmp_path / "outside")))


@pytest.mark.usefixtures("offline_hub")
@pytest.mark.parametrize("pretrained", [None, True, False])
def test_hub_failure_is_a_model_error(pretrained: bool | None) -> None:
    with pytest.raises(ModelError, match="could not load 'gpt2' from the Hugging Face hub"):
        load_causal_lm(ModelRequest(CAUSAL, "gpt2", pretrained=pretrained))


@pytest.mark.usefixtures("offline_hub")
def test_relative_name_missing_under_local_root_is_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="from the Hugging Face hub"):
        load_causal_lm(ModelRequest(CAUSAL, "distilbert/distilgpt2"), local_root=tmp_path)


def test_overrides_on_pretrained_hub_weights_are_refused_before_any_download() -> None:
    with pytest.raises(ModelError, match="cannot apply to pretrained weights"):
        load_causal_lm(ModelRequest(CAUSAL, "gpt2", overrides={"n_layer": 1}))


def test_tiny_gpt2_learns_more_than_byte_frequencies_from_stdlib_text() -> None:
    """End to end on CPU: Adam steps on packed docstrings must beat, on held-out blocks, a
    unigram model of the same bytes: what learning the bytes' frequencies alone reaches
    (3.23 nats here; 300 steps reach about 2.9, 30 steps only the unigram's 3.2-3.3)."""
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(tiny())
    data = DataRequest("builtin", "stdlib-text", max_samples=200)
    blocks = pack_blocks(load_texts(data), tokenizer, seq_len=64)
    train, validation = split_blocks(blocks, 0.1)
    unigram = causal_lm_unigram(data, tokenizer, seq_len=64, validation_split=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(300):
        batch = train[(step * 8) % (len(train) - 8) :][:8]
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        mask = torch.ones_like(validation)
        held_out = model(input_ids=validation, attention_mask=mask, labels=validation).loss.item()
    assert losses[0] > 5.0  # about ln(257): uniform over the vocabulary
    assert held_out < unigram.validation - 0.2, (held_out, unigram)


@pytest.mark.usefixtures("offline_hub")
def test_a_hub_model_name_never_loads_a_local_directory_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_pretrained tries a name as a local path first: another user's saved model under
    the worker's directory must not load as a 'hub id', whatever its shape."""
    from ray_module.models.text_to_text import load_text_to_text

    model, tokenizer = load_causal_lm(tiny())
    for where in ("var/storage/jobs/26/model", "jobs26/model"):
        model.save_pretrained(tmp_path / where)
        tokenizer.save_pretrained(tmp_path / where)
    data_root = tmp_path / "data"
    data_root.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="is not a Hugging Face hub id"):
        load_causal_lm(ModelRequest(CAUSAL, "var/storage/jobs/26/model"), local_root=data_root)
    with pytest.raises(ModelError, match="could not load 'jobs26/model' from the Hugging Face"):
        load_causal_lm(ModelRequest(CAUSAL, "jobs26/model"), local_root=data_root)
    with pytest.raises(ModelError, match="could not load 'jobs26/model' from the Hugging Face"):
        load_text_to_text(ModelRequest("text_to_text", "jobs26/model"), local_root=data_root)
    # Under the data root the same name is a local directory, as documented.
    model.save_pretrained(data_root / "jobs26/model")
    tokenizer.save_pretrained(data_root / "jobs26/model")
    loaded, _ = load_causal_lm(ModelRequest(CAUSAL, "jobs26/model"), local_root=data_root)
    assert isinstance(loaded, GPT2LMHeadModel)
