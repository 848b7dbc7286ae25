"""data_parallel checkpoints: the model and tokenizer as ``save_pretrained`` writes them
(safetensors) and the step as JSON. Nothing is pickled; the directory is swapped in whole."""

from __future__ import annotations

import json
from pathlib import Path

from ray_module.models.contract import Model
from ray_module.storage.checkpoints import STATE_FILE, saved_state
from ray_module.storage.directories import readable, replace_directory, staging_for


def save_checkpoint(model: Model, directory: Path, step: int) -> None:
    staging = staging_for(directory)
    model.save(staging / "model")
    (staging / STATE_FILE).write_text(json.dumps({"step": step}))
    replace_directory(staging, directory)


def load_checkpoint(directory: Path) -> tuple[Path, int] | None:
    """(the saved model's directory, its step), even if a crash moved the last one aside."""
    state = saved_state(directory)
    found = readable(directory)
    if state is None or found is None:
        return None
    return found / "model", int(state["step"])
