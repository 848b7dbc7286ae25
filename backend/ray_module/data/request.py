"""What a job's ``data_config`` asks for, as the runner and its workers receive it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataRequest:
    """The data part of a job spec, plus the data root the runner resolves local paths in."""

    data_source: str  # huggingface | local | builtin
    dataset_name: str
    dataset_config: str | None = None
    path: str | None = None
    split: str | None = None
    text_column: str | None = None
    target_column: str | None = None  # labels or targets (classifiers, text-to-text)
    max_samples: int | None = None
    validation_split: float | None = None
    data_root: str | None = None  # absolute path of DISTLM_DATA_ROOT
