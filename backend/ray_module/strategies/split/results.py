"""An infer job's results: rows written as they are predicted, to JSON Lines and Parquet at
once (never built in memory), rows under the confidence threshold counted and left out, and
the estimate of the result's size that the job reports before it runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.results import (  # noqa: F401  (the names are the protocol's)
    JSONL_FILE,
    PARQUET_FILE,
    RESULTS_DIR,
    SUMMARY_FILE,
    VALIDATION_FILE,
)
from ray_module.models.classifier import classifier_row
from ray_module.models.contract import PredictOptions


@dataclass(frozen=True)
class InferenceSettings:
    top_k: int = 1
    confidence_threshold: float = 0.0
    return_full_probabilities: bool = False
    batch_size: int = 64
    max_new_tokens: int = 32
    num_beams: int = 1

    @classmethod
    def of(cls, values: dict[str, Any]) -> InferenceSettings:
        return cls(**{k: v for k, v in values.items() if v is not None})


def row_bytes(row: dict[str, Any]) -> int:
    return len(json.dumps(row, separators=(",", ":")).encode()) + 1  # and its newline


def classifier_estimates(
    samples: int, names: list[str], settings: InferenceSettings
) -> dict[str, float]:
    """The result's size in MB, as the seed compares it: predictions only, top-k, and top-k
    with full probability vectors, from a typical row of each (every row kept: an upper
    bound when the threshold drops some)."""
    typical = np.full(len(names), 0.012345)
    typical[0] = 0.912345

    def size(**changes: Any) -> float:
        shaped = InferenceSettings(**{**settings.__dict__, **changes})
        options = PredictOptions(shaped.top_k, shaped.return_full_probabilities)
        row = {"id": max(samples - 1, 0), **classifier_row(typical, names, options)}
        return samples * row_bytes(row)

    mb = 2**20
    chosen = size() / mb
    return {
        "estimated_memory_mb": chosen,
        "estimated_memory_mb_predictions_only": size(top_k=1, return_full_probabilities=False) / mb,
        "estimated_memory_mb_top_k": size(return_full_probabilities=False) / mb,
        "estimated_memory_mb_full_probabilities": size(return_full_probabilities=True) / mb,
    }


def text_estimates(samples: int, mean_input_chars: float, settings: InferenceSettings) -> dict:
    # A generated token is a few characters; JSON adds the keys and quotes.
    per_row = 40 + 2 * mean_input_chars + 4 * settings.max_new_tokens
    return {"estimated_memory_mb": samples * per_row / 2**20}


class ResultWriter:
    """Appends rows to ``predictions.jsonl`` and ``predictions.parquet`` batch by batch."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.jsonl = (directory / JSONL_FILE).open("w", encoding="utf-8")
        self.parquet: Any = None
        self.total = self.kept = self.filtered_out = 0

    def write(self, rows: list[dict[str, Any]], considered: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.total += considered
        self.kept += len(rows)
        self.filtered_out += considered - len(rows)
        for row in rows:
            self.jsonl.write(json.dumps(row, separators=(",", ":")) + "\n")
        if not rows:
            return
        table = pa.Table.from_pylist(rows)
        if self.parquet is None:
            self.schema = table.schema
            self.parquet = pq.ParquetWriter(self.directory / PARQUET_FILE, self.schema)
        self.parquet.write_table(table.cast(self.schema))

    def close(self, extra: dict[str, Any]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.jsonl.close()
        if self.parquet is None:  # no row kept: an empty table, so both formats exist
            empty = pa.table({"id": pa.array([], pa.int64())})
            pq.write_table(empty, self.directory / PARQUET_FILE)
        else:
            self.parquet.close()
        jsonl_bytes = (self.directory / JSONL_FILE).stat().st_size
        parquet = self.directory / PARQUET_FILE
        summary = {
            "total_samples": self.total,
            "kept": self.kept,
            "filtered_out": self.filtered_out,
            "result_bytes": jsonl_bytes,
            "result_memory_mb": jsonl_bytes / 2**20,
            "parquet_bytes": parquet.stat().st_size if parquet.exists() else 0,
            **extra,
        }
        write_json(self.directory / SUMMARY_FILE, summary)
        return summary


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".partial")
    staging.write_text(json.dumps(document, indent=2))
    staging.replace(path)
