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
import tempfile
from collections.abc import Iterator

from protocol.catalogue import hub_id_problem, is_hub_id

__all__ = ["away_from_local_disk", "hub_id_problem", "is_hub_id", "require_hub_id"]


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
