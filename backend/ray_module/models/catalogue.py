"""The built-in model presets (random initialisation, no download) and their model types."""

from __future__ import annotations

PRESETS: dict[str, str] = {
    "tiny-gpt2": "simple_transformer",
    "tiny-t5": "text_to_text",
    "tiny-bart": "text_to_text",
    "mlp": "classifier",
    "cnn": "classifier",
    "rnn": "char_rnn",
}
