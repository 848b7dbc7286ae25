"""Hugging Face hub names: what a hub id may look like, and loading one without ever
touching this machine's files.

``from_pretrained`` and ``datasets.load_dataset`` try a name as a local path first, so a
"hub id" such as ``var/storage/jobs/26/model`` or ``/tmp/x/secret`` would read a file of
this node (another user's model, the gateway's secrets). A hub name must therefore look like
a hub id (``name`` or ``owner/name`` in the hub's character set), and it is loaded from an
empty working directory, so that even a name that happens to exist relative to the
worker's directory resolves only on the hub.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"{_PART}(?:/{_PART})?")


def is_hub_id(name: str) -> bool:
    """``name`` or ``owner/name``: letters, digits, ``.``, ``_``, ``-``; no ``..`` or ``--``
    (the hub refuses both), at most 96 characters a part."""
    return bool(HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name


def hub_id_problem(name: str, what: str) -> str | None:
    """Why ``name`` is not a hub id (a sentence naming ``what`` it was for), or None."""
    if is_hub_id(name):
        return None
    return (
        f"{what} {name!r} is not a Hugging Face hub id (use 'name' or 'owner/name' with "
        "letters, digits, '.', '_' and '-'); files are read only under DISTLM_DATA_ROOT"
    )


def require_hub_id(name: str, what: str, error: type[Exception]) -> None:
    """Raise ``error`` (the loader's DataError or ModelError) unless ``name`` is a hub id."""
    problem = hub_id_problem(name, what)
    if problem:
        raise error(problem)


@contextlib.contextmanager
def away_from_local_disk() -> Iterator[None]:
    """Run a hub loader from an empty directory: a relative name cannot match a local file.

    Changes the process's working directory for the duration: loaders run in a worker
    actor's own process, one load at a time.
    """
    with tempfile.TemporaryDirectory(prefix="distlm-hub-") as empty, contextlib.chdir(empty):
        yield
