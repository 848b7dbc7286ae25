"""Loading a Hugging Face hub dataset so that it reads only files of its own repository.

A dataset repository's card (README.md front matter, or ``.huggingface.yaml``) may list its
data files. ``datasets`` resolves each entry where it points: an absolute path reads a file
of the node that loads it (the file holding its credential, another job's data), a URL makes
the node fetch any address, ``hf://`` or ``../`` reaches into another repository. So the
card is read first, at a pinned revision, every ``data_files``/``data_dir`` entry must be a
path inside the repository, and only then is that same revision loaded.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ray_module.errors import DataError
from ray_module.hub import away_from_local_disk, require_hub_id

# fsspec protocols ("https://", "hf://", "file://") and chained URLs ("zip://a::https://b").
_REMOTE = re.compile(r"://|::")
# A Windows drive ("C:") is absolute too, whatever the node's system.
_DRIVE = re.compile(r"^[A-Za-z]:")


def entry_outside_repo(entry: str) -> str | None:
    """Why one data_files or data_dir entry could leave the repository, or None."""
    if not isinstance(entry, str):
        return f"{entry!r} is not a path"
    if _REMOTE.search(entry):
        return f"{entry!r} is a URL or another filesystem"
    if entry.startswith(("/", "\\", "~")) or _DRIVE.match(entry):
        return f"{entry!r} is an absolute path"
    if ".." in re.split(r"[\\/]", entry):
        return f"{entry!r} climbs out of the repository"
    return None


def _data_file_entries(data_files: Any) -> list[Any]:
    """Every path of a config's data_files: a string, a list, or a list of {split, path}."""
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [entry for value in data_files.values() for entry in _data_file_entries(value)]
    if isinstance(data_files, list):
        entries: list[Any] = []
        for item in data_files:
            if isinstance(item, dict):
                entries.extend(_data_file_entries(item.get("path")))
            else:
                entries.append(item)
        return entries
    return [data_files]


def card_files_outside_repo(card: dict[str, Any]) -> str | None:
    """Why a dataset card's configs could read outside the repository, or None.

    ``card`` is the card's YAML front matter (with ``.huggingface.yaml`` merged over it, as
    ``datasets`` does).
    """
    configs = card.get("configs") or []
    if not isinstance(configs, list):
        return "its card's configs are not a list"
    for config in configs:
        if not isinstance(config, dict):
            return "its card has a config that is not a mapping"
        name = config.get("config_name", "default")
        entries = _data_file_entries(config.get("data_files"))
        if config.get("data_dir") is not None:
            entries.append(config["data_dir"])
        for entry in entries:
            problem = entry_outside_repo(entry)
            if problem:
                return (
                    f"config {name!r} names a data file outside the dataset's repository: "
                    + problem
                )
    return None


def front_matter(readme: str) -> dict[str, Any]:
    """The YAML block a dataset card starts with ({} when it has none)."""
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", readme, re.DOTALL)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


def _read_repo_text(name: str, filename: str, revision: str) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        path = hf_hub_download(name, filename, repo_type="dataset", revision=revision)
    except RemoteEntryNotFoundError:  # the hub says there is no such file (not: offline)
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def hub_dataset_card(name: str, revision: str) -> dict[str, Any]:
    """The card's front matter at ``revision``, ``.huggingface.yaml`` merged over it."""
    card = front_matter(_read_repo_text(name, "README.md", revision) or "")
    standalone = _read_repo_text(name, ".huggingface.yaml", revision)
    if standalone:
        extra = yaml.safe_load(standalone)
        if isinstance(extra, dict):
            card.update(extra)
    return card


def load_hub_dataset(name: str, config: str | None, split: str, described: str) -> Any:
    """``datasets.load_dataset`` of a hub id, refused if its card names files outside it.

    ``described`` names the request in error messages.
    """
    # Imported here: datasets is slow to import and only hub sources need it.
    import datasets
    from huggingface_hub import HfApi

    require_hub_id(name, "dataset_name", DataError)
    try:
        with away_from_local_disk():
            # One revision for the check and the load: a repository changed in between
            # cannot slip a file past the check.
            revision = HfApi().dataset_info(name).sha
            problem = card_files_outside_repo(hub_dataset_card(name, revision))
            if problem is None:
                return datasets.load_dataset(name, config, split=split, revision=revision)
    except Exception as error:  # network, missing dataset or config, offline mode, bad split
        raise DataError(
            f"could not load dataset {described} from the Hugging Face hub: {error}"
        ) from error
    raise DataError(f"dataset {described} is refused: {problem}")
