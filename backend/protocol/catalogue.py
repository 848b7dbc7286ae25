"""What a job may name, as both sides check it: the built-in model presets (random
initialisation, no download) with their model types, the built-in datasets (offline) with
the model types each can train, and what a Hugging Face hub id may look like."""

from __future__ import annotations

import re

PRESETS: dict[str, str] = {
    "tiny-gpt2": "simple_transformer",
    "tiny-t5": "text_to_text",
    "tiny-bart": "text_to_text",
    "mlp": "classifier",
    "cnn": "classifier",
    "rnn": "char_rnn",
}

BUILTIN_DATASETS: dict[str, frozenset[str]] = {
    "digits": frozenset({"classifier"}),  # scikit-learn's 8x8 digit images
    "stdlib-text": frozenset({"simple_transformer", "char_rnn"}),  # stdlib docstrings
    "synthetic-t2t": frozenset({"text_to_text"}),  # reverse / sort / add pairs
}


def builtin_datasets_for(model_type: str) -> list[str]:
    return sorted(name for name, types in BUILTIN_DATASETS.items() if model_type in types)


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
