"""What a job's ``model_config`` asks for, and where a named model lives on disk.

Kept free of transformers so that model types that do not need it (classifiers) start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocol.run import ModelRequest
from ray_module.errors import ModelError


def local_model_directory(name: str, local_root: Path | None) -> Path | None:
    """The directory ``name`` refers to, or None when it should be treated as a hub id.

    Absolute and ``./``-style names are always local. A bare relative name ("org/model") is
    local only when it exists under ``local_root``, because hub ids look exactly the same.
    """
    explicit = Path(name).is_absolute() or name.startswith(("./", "../", "~"))
    if explicit:
        candidate = Path(name).expanduser()
        if not candidate.is_absolute():
            if local_root is None:
                raise ModelError(f"relative model path {name!r} needs a local model root")
            candidate = inside_root(name, local_root)
    elif local_root is not None and (Path(local_root) / name).is_dir():
        candidate = inside_root(name, local_root)
    else:
        return None
    if not candidate.is_dir():
        raise ModelError(f"model directory {name!r} does not exist")
    if not (candidate / "config.json").is_file():
        raise ModelError(
            f"{name!r} is not a saved model: it has no config.json "
            "(save one with model.save_pretrained(directory))"
        )
    return candidate


def inside_root(name: str, local_root: Path) -> Path:
    root = Path(local_root).resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root):
        raise ModelError(f"model path {name!r} points outside the local model root")
    return candidate


def preset_overrides(request: ModelRequest, allowed: frozenset[str]) -> dict[str, int]:
    """A built-in preset's size overrides; presets are built from code, so they have no
    pretrained weights to ask for."""
    if request.pretrained:
        raise ModelError(
            f"{request.model_name.strip()!r} is a built-in preset and has no pretrained weights"
        )
    return checked_overrides(request.overrides, allowed)


def checked_overrides(overrides: dict[str, Any], allowed: frozenset[str]) -> dict[str, int]:
    """Architecture overrides: known keys with positive integer sizes, else ModelError."""
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ModelError(f"unknown model overrides {unknown}; allowed: {sorted(allowed)}")
    for key, value in overrides.items():
        # bool is an int subclass; True layers is a typo, not a size.
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"override {key!r} must be a positive integer, got {value!r}")
    return dict(overrides)
