"""Text data: the built-in corpus, local files confined to the data root, the Hugging Face
path (offline: its failure, and its handling of a dataset it returns), packing and splitting."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import datasets.config
import huggingface_hub.constants
import pytest
import torch

from protocol.run import DataRequest
from ray_module.data.texts import load_texts, pack_blocks, split_blocks, stdlib_corpus
from ray_module.errors import DataError
from ray_module.models.causal_lm import build_byte_tokenizer
from tests.paths import BACKEND
from tests.ray_module.data.conftest import HubRepos
from tests.ray_module.data.fake_hub import REVISION


def local(path: str, root: Path, **fields: object) -> DataRequest:
    return DataRequest("local", "mine", path=path, data_root=str(root), **fields)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """datasets and huggingface_hub read the offline switches at import; patch the module
    values as well as the environment, and point the caches at an empty directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


# -- builtin ---------------------------------------------------------------------------------


def test_stdlib_text_is_large_and_clean() -> None:
    texts = load_texts(DataRequest("builtin", "stdlib-text"))
    assert sum(len(text.encode("utf-8")) for text in texts) > 200_000
    assert all(text and text == text.strip() for text in texts)
    assert len(set(texts)) == len(texts)
    assert any("JSON" in text for text in texts)


def test_stdlib_text_is_identical_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """Workers of one job each build the corpus (here with an empty cache: from the
    sources); they must all get the same one."""
    script = (
        "import hashlib, json\n"
        "from ray_module.data.texts import stdlib_corpus\n"
        "print(hashlib.sha256(json.dumps(stdlib_corpus()).encode()).hexdigest())\n"
    )
    backend = str(BACKEND)
    digest = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": backend, "PATH": "", "XDG_CACHE_HOME": str(tmp_path)},
    ).stdout.strip()
    assert digest == hashlib.sha256(json.dumps(stdlib_corpus()).encode()).hexdigest()


def test_max_samples_takes_the_first_texts() -> None:
    everything = load_texts(DataRequest("builtin", "stdlib-text"))
    first = load_texts(DataRequest("builtin", "stdlib-text", max_samples=7))
    assert first == everything[:7]
    with pytest.raises(DataError, match="max_samples"):
        load_texts(DataRequest("builtin", "stdlib-text", max_samples=0))


def test_load_texts_returns_a_copy_of_the_cached_corpus() -> None:
    texts = load_texts(DataRequest("builtin", "stdlib-text"))
    texts.clear()
    assert load_texts(DataRequest("builtin", "stdlib-text"))


@pytest.mark.parametrize("name", ["digits", "synthetic-t2t"])
def test_non_text_builtins_are_refused_with_the_alternative(name: str) -> None:
    with pytest.raises(DataError, match=r"not a text corpus.*stdlib-text"):
        load_texts(DataRequest("builtin", name))


def test_unknown_builtin_and_source_are_refused() -> None:
    with pytest.raises(DataError, match="unknown built-in dataset"):
        load_texts(DataRequest("builtin", "wikitext"))
    with pytest.raises(DataError, match="unknown data_source"):
        load_texts(DataRequest("s3", "bucket"))


# -- local -----------------------------------------------------------------------------------


def test_local_txt_splits_into_paragraphs(data_root: Path) -> None:
    (data_root / "book.txt").write_text("First para\nstill first.\n\n\n  Second.  \n \nThird\n")
    assert load_texts(local("book.txt", data_root)) == [
        "First para\nstill first.",
        "Second.",
        "Third",
    ]


def test_local_jsonl_reads_the_text_column(data_root: Path) -> None:
    rows = [{"text": "one", "id": 1}, {"text": "", "id": 2}, {"text": "two", "id": 3}]
    (data_root / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    assert load_texts(local("rows.jsonl", data_root)) == ["one", "two"]
    with pytest.raises(DataError, match="no column 'body'"):
        load_texts(local("rows.jsonl", data_root, text_column="body"))


def test_local_json_and_csv_read_a_chosen_column(data_root: Path) -> None:
    records = [{"body": "alpha", "label": "x"}, {"body": "béta, with comma", "label": "y"}]
    (data_root / "rows.json").write_text(json.dumps(records), encoding="utf-8")
    (data_root / "rows.csv").write_text(
        'body,label\nalpha,x\n"béta, with comma",y\n', encoding="utf-8"
    )
    expected = ["alpha", "béta, with comma"]
    assert load_texts(local("rows.json", data_root, text_column="body")) == expected
    assert load_texts(local("rows.csv", data_root, text_column="body")) == expected
    with pytest.raises(DataError, match="no column 'text'"):
        load_texts(local("rows.csv", data_root))


def test_local_directory_reads_txt_files_in_sorted_order(data_root: Path) -> None:
    corpus = data_root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "b.txt").write_text("bee")
    (corpus / "a.txt").write_text("ay\n\nay again")
    (corpus / "sub" / "c.txt").write_text("sea")
    (corpus / "notes.md").write_text("ignored")
    texts = load_texts(local("corpus", data_root, max_samples=3))
    assert texts == ["ay", "ay again", "bee"]
    assert load_texts(local("corpus", data_root)) == ["ay", "ay again", "bee", "sea"]


def test_local_path_cannot_escape_the_data_root(data_root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (data_root / "link.txt").symlink_to(secret)
    (data_root / "linked-dir").mkdir()
    (data_root / "linked-dir" / "inner.txt").symlink_to(secret)
    for path in ["../secret.txt", str(secret), "link.txt", "linked-dir"]:
        with pytest.raises(DataError, match="outside the data root"):
            load_texts(local(path, data_root))


def test_local_errors_name_the_problem(data_root: Path) -> None:
    (data_root / "table.parquet").write_bytes(b"PAR1")
    (data_root / "table.xlsx").write_bytes(b"PK")
    (data_root / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n')
    (data_root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (data_root / "empty.txt").write_text("\n\n  \n")
    cases = {
        "missing.txt": "does not exist",
        "table.parquet": "cannot read table.parquet as Parquet",
        "table.xlsx": "use a .txt, .jsonl, .json, .csv or .parquet",
        "broken.jsonl": "line 2 is not JSON",
        "latin1.txt": "not UTF-8",
        "empty.txt": "no text found",
    }
    for path, message in cases.items():
        with pytest.raises(DataError, match=message):
            load_texts(local(path, data_root))
    with pytest.raises(DataError, match="data root"):
        load_texts(DataRequest("local", "mine", path="book.txt"))
    with pytest.raises(DataError, match="needs a path"):
        load_texts(DataRequest("local", "mine", data_root=str(data_root)))


# -- huggingface -----------------------------------------------------------------------------


@pytest.mark.usefixtures("offline_hub")
def test_huggingface_failure_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"could not load dataset 'wikitext'.*Hugging Face hub"):
        load_texts(DataRequest("huggingface", "wikitext", dataset_config="wikitext-2-raw-v1"))


def test_huggingface_rows_become_texts(
    monkeypatch: pytest.MonkeyPatch, stand_in_hub: Callable[[HubRepos], list[str]]
) -> None:
    """The hub is a loopback stand-in and datasets' loader is replaced (no network); what is
    tested is what we do around them, the revision checked being the one loaded."""
    calls: list[tuple[str, str | None, str]] = []
    lines = ["", " = Title = \n", "   \n", " Body line one .\n", " Body line two .\n"]

    def fake_load_dataset(
        name: str, config: str | None, *, split: str, revision: str
    ) -> datasets.Dataset:
        assert revision == REVISION
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": lines, "other": list(range(len(lines)))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stand_in_hub({"wikitext": {"README.md": "A card with no front matter."}, "org/set": {}})
    texts = load_texts(DataRequest("huggingface", "wikitext"))
    assert texts == [" = Title = \n", " Body line one .\n", " Body line two .\n"]
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train")]

    capped = load_texts(
        DataRequest("huggingface", "org/set", "cfg", split="validation", max_samples=2)
    )
    assert capped == texts[:2]
    assert calls[-1] == ("org/set", "cfg", "validation")
    with pytest.raises(DataError, match="no column 'content'"):
        load_texts(DataRequest("huggingface", "org/set", text_column="content"))


# -- packing and splitting -------------------------------------------------------------------


def test_pack_blocks_joins_texts_with_end_of_text_and_drops_the_tail() -> None:
    tokenizer = build_byte_tokenizer()
    blocks = pack_blocks(["abc", "de", "fghij"], tokenizer, seq_len=4)
    eos = tokenizer.eos_token_id
    stream = [*b"abc", eos, *b"de", eos, *b"fghij", eos]  # 13 tokens: 3 blocks, 1 dropped
    assert blocks.dtype == torch.long
    assert blocks.shape == (3, 4)
    assert blocks.flatten().tolist() == stream[:12]


def test_pack_blocks_on_the_corpus() -> None:
    texts = list(stdlib_corpus()[:50])
    blocks = pack_blocks(texts, build_byte_tokenizer(), seq_len=128)
    total = sum(len(text.encode("utf-8")) + 1 for text in texts)
    assert blocks.shape == (total // 128, 128)
    assert int(blocks.max()) <= 256


def test_pack_blocks_needs_two_blocks_and_a_sensible_length() -> None:
    tokenizer = build_byte_tokenizer()
    with pytest.raises(DataError, match="fewer than two blocks"):
        pack_blocks(["short"], tokenizer, seq_len=4)
    with pytest.raises(DataError, match="seq_len"):
        pack_blocks(["plenty of text here"], tokenizer, seq_len=1)


def test_split_blocks_sizes_and_determinism() -> None:
    blocks = torch.arange(100 * 3).view(100, 3)
    train, validation = split_blocks(blocks, 0.2, seed=7)
    assert (len(train), len(validation)) == (80, 20)
    rows = sorted(tuple(row) for row in torch.cat([train, validation]).tolist())
    assert rows == [tuple(row) for row in blocks.tolist()]  # a partition, nothing lost
    again_train, again_validation = split_blocks(blocks, 0.2, seed=7)
    assert torch.equal(train, again_train) and torch.equal(validation, again_validation)
    other_train, _ = split_blocks(blocks, 0.2, seed=8)
    assert not torch.equal(train, other_train)
    assert not torch.equal(validation, blocks[80:])  # shuffled, not the tail


def test_split_blocks_keeps_one_block_on_each_side() -> None:
    blocks = torch.zeros(2, 4, dtype=torch.long)
    for fraction in (0.01, 0.99):
        train, validation = split_blocks(blocks, fraction)
        assert (len(train), len(validation)) == (1, 1)
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(DataError, match="between 0 and 1"):
            split_blocks(blocks, fraction)
    with pytest.raises(DataError, match="at least two blocks"):
        split_blocks(torch.zeros(1, 4, dtype=torch.long), 0.5)


@pytest.mark.usefixtures("offline_hub")
@pytest.mark.parametrize("name", ["secret.txt", "x/secret.txt"])
def test_a_hub_dataset_name_never_reads_a_local_file_of_that_name(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """datasets tries a name as a local path first: a file the worker's directory happens
    to hold (another user's data, a secret) must not be read as the 'hub dataset'."""
    (tmp_path / "x").mkdir()
    for path in (tmp_path / "secret.txt", tmp_path / "x" / "secret.txt"):
        path.write_text("the gateway's secret key\n" * 50)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="Hugging Face hub") as caught:
        load_texts(DataRequest("huggingface", name))
    assert "secret key" not in str(caught.value)


@pytest.mark.parametrize("name", ["/tmp/x/secret", "../x/secret", "var/storage/jobs/26", "a b"])
def test_a_hub_dataset_name_must_look_like_a_hub_id(name: str) -> None:
    with pytest.raises(DataError, match="is not a Hugging Face hub id"):
        load_texts(DataRequest("huggingface", name))
