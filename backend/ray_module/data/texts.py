"""Text data for language-model training: load a corpus, pack it into token blocks, split it.

Three sources, as in a job's ``data_config``:

- ``builtin``: ``stdlib-text``, the docstrings of Python's standard library, built offline
  and identically on every machine, so that workers of one job see the same corpus;
- ``local``: files under ``DISTLM_DATA_ROOT`` (never outside it: a job spec is user input);
- ``huggingface``: the ordinary ``datasets.load_dataset`` path.

Every failure surfaces as ``DataError`` with a sentence a user can act on.
"""

from __future__ import annotations

import ast
import csv
import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.catalogue import BUILTIN_DATASETS
from protocol.run import DataRequest
from ray_module.data import corpus_cache, hub_datasets
from ray_module.errors import DataError

if TYPE_CHECKING:  # torch where blocks are made: a job's runner imports this module too
    import torch
    from transformers import PreTrainedTokenizerBase

STDLIB_TEXT = "stdlib-text"
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_HF_SPLIT = "train"
# Seed configs ask for "wikitext" alone, which the hub refuses without a config name.
DEFAULT_HF_CONFIGS = {"wikitext": "wikitext-2-raw-v1", "Salesforce/wikitext": "wikitext-2-raw-v1"}

# A fixed, sorted list so the corpus never depends on what happens to be importable or on
# import order. Only modules with no import side effects and no platform-specific absence.
STDLIB_CORPUS_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "enum", "fileinput", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob",
    "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "mailbox", "math",
    "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil",
    "platform", "pprint", "queue", "random", "re", "sched", "secrets", "shlex", "shutil",
    "smtplib", "socket", "statistics", "string", "struct", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "types",
    "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
)  # fmt: skip

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def load_texts(request: DataRequest) -> list[str]:
    """The texts ``request`` names, in a deterministic order, capped at ``max_samples``."""
    if request.max_samples is not None and request.max_samples < 1:
        raise DataError(f"max_samples must be at least 1, got {request.max_samples}")
    if request.data_source == "builtin":
        texts = _builtin_texts(request.dataset_name)
    elif request.data_source == "local":
        texts = _local_texts(request)
    elif request.data_source == "huggingface":
        texts = _huggingface_texts(request)
    else:
        raise DataError(
            f"unknown data_source {request.data_source!r}; use huggingface, local or builtin"
        )
    if not texts:
        raise DataError(f"no text found in {request.data_source} dataset {request.dataset_name!r}")
    return texts[: request.max_samples] if request.max_samples is not None else texts


def pack_blocks(texts: list[str], tokenizer: PreTrainedTokenizerBase, seq_len: int) -> torch.Tensor:
    """Tokenise ``texts``, end each with end-of-text, and cut the stream into ``[n, seq_len]``.

    Packing wastes no compute on padding; the end-of-text tokens tell the model where one
    document stops and the next begins. The incomplete last block is dropped.
    """
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2 to predict a next token, got {seq_len}")
    end_of_text = tokenizer.eos_token_id
    if end_of_text is None:
        raise DataError("the tokenizer has no end-of-text token to separate documents with")
    # verbose=False: texts longer than the model's context are expected here, they get cut.
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        stream.append(end_of_text)
    n_blocks = len(stream) // seq_len
    if n_blocks < 2:
        raise DataError(
            f"the data makes {len(stream)} tokens, fewer than two blocks of {seq_len}; "
            "add data or lower the sequence length"
        )
    import torch

    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def split_blocks(
    blocks: torch.Tensor, validation_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle blocks with ``seed`` and return ``(train, validation)``, each non-empty.

    Shuffling first keeps validation from being one contiguous stretch of one document.
    """
    n_blocks = blocks.shape[0]
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation split must be between 0 and 1, got {validation_fraction}")
    if n_blocks < 2:
        raise DataError(f"need at least two blocks to split, got {n_blocks}")
    n_validation = min(max(round(n_blocks * validation_fraction), 1), n_blocks - 1)
    import torch

    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))
    return blocks[order[n_validation:]], blocks[order[:n_validation]]


@functools.lru_cache(maxsize=1)
def stdlib_corpus() -> tuple[str, ...]:
    """Docstrings of the modules in ``STDLIB_CORPUS_MODULES`` and of the public classes,
    functions and methods they define, in source order, each text once.

    Read from the modules' source files with ``ast``, never by importing them: libraries
    patch the standard library at import time (pytest, torch), so imported docstrings would
    depend on what else the process loaded, and every Ray worker must see the same corpus.
    Modules written in C have no source and are skipped. Parsing takes most of a CPU-second,
    paid by every worker of a text job, so the result is kept in the user's cache
    (``corpus_cache``) under a key made from the source files themselves.
    """
    sources = _corpus_sources()
    return corpus_cache.remembered(STDLIB_TEXT, sources, lambda: _parse_corpus(sources))


def _corpus_sources() -> list[Path]:
    found = (importlib.util.find_spec(name) for name in STDLIB_CORPUS_MODULES)
    origins = (spec.origin if spec is not None else None for spec in found)
    return [Path(origin) for origin in origins if origin and origin.endswith(".py")]


def _parse_corpus(sources: list[Path]) -> tuple[str, ...]:
    seen: set[str] = set()
    texts: list[str] = []
    for source in sources:
        for doc in _source_docstrings(source):
            if doc not in seen:
                seen.add(doc)
                texts.append(doc)
    return tuple(texts)


def _source_docstrings(source: Path) -> list[str]:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    docs = [ast.get_docstring(tree)]
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and (
            not node.name.startswith("_")
        ):
            docs.append(ast.get_docstring(node))
            if isinstance(node, ast.ClassDef):
                docs.extend(
                    ast.get_docstring(item)
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and not item.name.startswith("_")
                )
    return [doc.strip() for doc in docs if doc and doc.strip()]


def _builtin_texts(name: str) -> list[str]:
    if name == STDLIB_TEXT:
        return list(stdlib_corpus())
    if name in BUILTIN_DATASETS:
        raise DataError(
            f"built-in dataset {name!r} is not a text corpus (it trains "
            f"{', '.join(sorted(BUILTIN_DATASETS[name]))} models); "
            f"language models train on {STDLIB_TEXT!r}"
        )
    raise DataError(
        f"unknown built-in dataset {name!r}; built-in datasets are {sorted(BUILTIN_DATASETS)}"
    )


def local_target(request: DataRequest) -> tuple[Path, Path]:
    """(data root, the requested path resolved inside it); refused if it leads outside."""
    if not request.data_root:
        raise DataError("local data needs a data root (DISTLM_DATA_ROOT) to read from")
    if not request.path:
        raise DataError("local data needs a path relative to the data root")
    root = Path(request.data_root).resolve()
    return root, inside_root(root, root / request.path, shown_as=request.path)


def _local_texts(request: DataRequest) -> list[str]:
    root, target = local_target(request)
    if not target.exists():
        raise DataError(f"local data path {request.path!r} does not exist under the data root")
    column = request.text_column or DEFAULT_TEXT_COLUMN
    if target.is_dir():
        # A symlink inside the directory may still point out of the root: check every file.
        files = [
            inside_root(root, file, shown_as=str(file.relative_to(root)))
            for file in sorted(target.rglob("*.txt"))
        ]
        if not files:
            raise DataError(f"directory {request.path!r} holds no .txt files")
        return [paragraph for file in files for paragraph in _paragraphs(file)]
    suffix = target.suffix.lower()
    if suffix == ".txt":
        return _paragraphs(target)
    if suffix in RECORD_SUFFIXES:
        return column_texts(target, column)
    raise DataError(
        f"cannot read {request.path!r}: use a .txt, .jsonl, .json, .csv or .parquet file"
    )


def inside_root(root: Path, path: Path, *, shown_as: str) -> Path:
    """``path`` with symlinks resolved, refused if that lands outside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"local data path {shown_as!r} points outside the data root")
    return resolved


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path.name} is not UTF-8 text: {error}") from error


def _paragraphs(path: Path) -> list[str]:
    """Blank lines separate documents in a plain-text file."""
    chunks = (chunk.strip() for chunk in _PARAGRAPH_BREAK.split(_read_text(path)))
    return [chunk for chunk in chunks if chunk]


RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_records(path: Path) -> list[Any]:
    """The rows of a .jsonl, .json (a list), .csv or .parquet file, as parsed; DataError if
    unreadable."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as error:  # not Parquet, truncated, unsupported types
            raise DataError(f"cannot read {path.name} as Parquet: {error}") from error
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            try:
                return list(csv.DictReader(handle))
            except (UnicodeDecodeError, csv.Error) as error:
                raise DataError(f"cannot read {path.name} as UTF-8 CSV: {error}") from error
    if suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path.name} line {line_number} is not JSON: {error}") from error
        return records
    try:
        records = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path.name} is not JSON: {error}") from error
    if not isinstance(records, list):
        raise DataError(f"{path.name} must hold a JSON list of objects")
    return records


def column_texts(path: Path, column: str) -> list[str]:
    """The texts of one column of a records file."""
    return _column_texts(read_records(path), column, path.name)


def _column_texts(records: list[Any], column: str, source: str) -> list[str]:
    """The non-empty strings in ``column``; a missing column is an error, not empty data."""
    texts = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"record {number} of {source} is not an object with named fields")
        if column not in record:
            raise DataError(
                f"record {number} of {source} has no column {column!r}; "
                f"it has {sorted(record)} (set text_column)"
            )
        value = record[column]
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"column {column!r} of record {number} in {source} is not text")
        if value.strip():
            texts.append(value)
    return texts


def _huggingface_texts(request: DataRequest) -> list[str]:
    name = request.dataset_name
    config = request.dataset_config or DEFAULT_HF_CONFIGS.get(name)
    split = request.split or DEFAULT_HF_SPLIT
    column = request.text_column or DEFAULT_TEXT_COLUMN
    described = f"{name!r}" + (f" (config {config!r})" if config else "") + f" split {split!r}"
    dataset = hub_datasets.load_hub_dataset(name, config, split, described)
    if column not in dataset.column_names:
        raise DataError(
            f"dataset {described} has no column {column!r}; it has {dataset.column_names} "
            "(set text_column)"
        )
    texts = []
    for value in dataset[column]:  # a lazy column: stops reading at max_samples
        # wikitext and friends hold one line per row, many of them empty.
        if isinstance(value, str) and value.strip():
            texts.append(value)
            if request.max_samples is not None and len(texts) >= request.max_samples:
                break
    return texts
