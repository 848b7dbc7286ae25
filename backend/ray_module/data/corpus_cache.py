"""A built-in corpus, kept in the user's cache once built: every worker of a text job would
otherwise rebuild it from source files (most of a CPU-second each, before its first step).

The key is made from the Python version and each source file's path, size and change time,
so a changed file or another interpreter builds (and keeps) a corpus of its own. The file is
JSON (never pickle), written whole and renamed into place, and read back only if it holds
exactly what was asked for; anything else (no cache directory, a damaged or foreign file)
builds the corpus again, as if there were no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

FORMAT = 1


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/distlm`` (``~/.cache/distlm``): the user's own, never a shared /tmp."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "distlm"


def corpus_key(name: str, sources: list[Path]) -> str:
    digest = hashlib.sha256(f"{FORMAT}\0{name}\0{sys.version}".encode())
    for source in sources:
        stat = source.stat()
        digest.update(f"\0{source}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def remembered(
    name: str, sources: list[Path], build: Callable[[], tuple[str, ...]]
) -> tuple[str, ...]:
    """The corpus ``name`` built from ``sources``: from the cache if it holds this very
    build, else ``build()``, kept for next time where the cache can be written."""
    try:
        key = corpus_key(name, sources)
    except OSError:
        return build()
    path = cache_dir() / f"corpus-{name}-{key}.json"
    cached = _read(path, key)
    if cached is not None:
        return cached
    texts = build()
    _write(path, key, texts)
    return texts


def _read(path: Path, key: str) -> tuple[str, ...] | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    texts = stored.get("texts")
    if not isinstance(texts, list):
        return None
    if not all(isinstance(text, str) for text in texts):
        return None
    return tuple(texts)


def _write(path: Path, key: str, texts: tuple[str, ...]) -> None:
    partial: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside, then renamed: a worker reading meanwhile sees all or nothing.
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=".corpus-", delete=False
        ) as file:
            partial = Path(file.name)
            json.dump({"key": key, "texts": list(texts)}, file)
        os.replace(partial, path)
    except OSError:
        # No cache here (a read-only home, a full disk): the next worker builds it too.
        if partial is not None:
            partial.unlink(missing_ok=True)
