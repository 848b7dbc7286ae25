"""Replacing a directory (a checkpoint, a saved model) so that a crash at any moment leaves one
whole copy behind: the old one moves aside, the new one moves in, then the old one goes."""

from __future__ import annotations

import shutil
from pathlib import Path


def staging_for(directory: Path) -> Path:
    """An empty sibling to write the new version into."""
    staging = directory.with_name(directory.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def replace_directory(staging: Path, directory: Path) -> None:
    previous = directory.with_name(directory.name + ".old")
    if previous.exists():
        shutil.rmtree(previous)
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    if previous.exists():
        shutil.rmtree(previous)


def readable(directory: Path) -> Path | None:
    """The directory, or the previous version a crash left aside, or None."""
    if directory.exists():
        return directory
    previous = directory.with_name(directory.name + ".old")
    return previous if previous.exists() else None
