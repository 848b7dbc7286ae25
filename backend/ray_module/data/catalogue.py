"""The built-in datasets (usable offline) and the model types each can train."""

from __future__ import annotations

BUILTIN_DATASETS: dict[str, frozenset[str]] = {
    "digits": frozenset({"classifier"}),  # scikit-learn's 8x8 digit images
    "stdlib-text": frozenset({"simple_transformer", "char_rnn"}),  # stdlib docstrings
    "synthetic-t2t": frozenset({"text_to_text"}),  # reverse / sort / add pairs
}


def builtin_datasets_for(model_type: str) -> list[str]:
    return sorted(name for name, types in BUILTIN_DATASETS.items() if model_type in types)
