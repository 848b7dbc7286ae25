"""The built-in corpus is parsed once per machine and interpreter, then read from the
user's cache; a changed source, a damaged file or no writable cache still gives the corpus
as built from the sources."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ray_module.data import corpus_cache
from ray_module.data.texts import _corpus_sources, _parse_corpus


@pytest.fixture
def cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "distlm"


def counting(texts: tuple[str, ...]) -> tuple[list[int], object]:
    builds: list[int] = []

    def build() -> tuple[str, ...]:
        builds.append(1)
        return texts

    return builds, build


def test_the_stdlib_corpus_is_built_once_then_read_back_the_same(cache_home: Path) -> None:
    sources = _corpus_sources()
    builds, build = counting(_parse_corpus(sources))
    first = corpus_cache.remembered("stdlib-text", sources, build)
    again = corpus_cache.remembered("stdlib-text", sources, build)
    assert builds == [1]
    assert again == first and len(first) > 1000
    assert [path.name.startswith("corpus-stdlib-text-") for path in cache_home.iterdir()] == [True]


def test_a_changed_source_builds_a_corpus_of_its_own(cache_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text('"""One."""\n')
    corpus_cache.remembered("mine", [source], lambda: ("one",))
    source.write_text('"""Two, longer."""\n')
    os.utime(source, ns=(1, 1))
    assert corpus_cache.remembered("mine", [source], lambda: ("two",)) == ("two",)
    assert len(list(cache_home.iterdir())) == 2


DAMAGES = {
    "not JSON": lambda key: "{not json",
    "another build's": lambda key: json.dumps({"key": "0" * 32, "texts": ["x"]}),
    "not an object": lambda key: json.dumps([1, 2]),
    "texts that are not strings": lambda key: json.dumps({"key": key, "texts": [1, 2]}),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_or_foreign_file_is_built_again(cache_home: Path, tmp_path: Path, damage) -> None:
    source = tmp_path / "module.py"
    source.write_text('"""Doc."""\n')
    corpus_cache.remembered("mine", [source], lambda: ("doc",))
    (kept,) = cache_home.iterdir()
    kept.write_text(damage(json.loads(kept.read_text())["key"]))
    builds, build = counting(("doc",))
    assert corpus_cache.remembered("mine", [source], build) == ("doc",)
    assert builds == [1]
    assert json.loads(kept.read_text())["texts"] == ["doc"]  # and kept right again


def test_no_writable_cache_still_gives_the_corpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    source = tmp_path / "module.py"
    source.write_text('"""Doc."""\n')
    builds, build = counting(("doc",))
    assert corpus_cache.remembered("mine", [source], build) == ("doc",)
    assert corpus_cache.remembered("mine", [source], build) == ("doc",)
    assert builds == [1, 1]
