"""A checkpoint directory: named numpy arrays as safetensors and the rest as JSON. Nothing
is pickled (nodes write these files), and it is swapped in whole (``directories``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ray_module.storage.directories import readable, replace_directory, staging_for

ARRAYS_FILE = "arrays.safetensors"
STATE_FILE = "state.json"


def save_arrays(directory: Path, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    staging = staging_for(directory)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(staging / ARRAYS_FILE))
    (staging / STATE_FILE).write_text(json.dumps(state))
    replace_directory(staging, directory)


def load_arrays(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(arrays, state) of the last whole checkpoint, or None when there is none."""
    from safetensors.numpy import load_file

    found = readable(directory)
    if found is None or not (found / STATE_FILE).is_file() or not (found / ARRAYS_FILE).is_file():
        return None
    return load_file(str(found / ARRAYS_FILE)), json.loads((found / STATE_FILE).read_text())


def saved_state(directory: Path) -> dict[str, Any] | None:
    """The JSON state of the last whole checkpoint in ``directory`` (any strategy's)."""
    found = readable(directory)
    if found is None or not (found / STATE_FILE).is_file():
        return None
    return json.loads((found / STATE_FILE).read_text())
