"""Supervised examples for classifiers and text-to-text models: labelled feature arrays and
(input, target) string pairs, from the same three sources as language-model text.

- ``builtin``: ``digits`` (scikit-learn's 8x8 digits, shipped inside scikit-learn, so offline)
  and ``synthetic-t2t`` (deterministic reverse / sort / add tasks generated from a seed);
- ``local``: a .csv, .jsonl or .json file under ``DISTLM_DATA_ROOT``;
- ``huggingface``: ``datasets.load_dataset``; image columns become grayscale pixel arrays,
  numeric columns become tabular features.

Every failure is a ``DataError`` with a sentence a user can act on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.run import DataRequest
from ray_module.data import hub_datasets
from ray_module.data.texts import RECORD_SUFFIXES, column_texts, local_target, read_records
from ray_module.errors import DataError

DIGITS = "digits"
SYNTHETIC_T2T = "synthetic-t2t"
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_INPUT_COLUMN = "input"
DEFAULT_TARGET_COLUMN = "target"
SYNTHETIC_T2T_SIZE = 3000
SYNTHETIC_T2T_TASKS = ("reverse", "sort", "add")


@dataclass(frozen=True)
class LabelledData:
    """Features ``[n, *input_shape]`` (float32) and integer labels ``[n]``."""

    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class PairData:
    """Input and target strings; ``kinds`` names each pair's task where one is known (it is
    what a non-IID partition skews over)."""

    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    kinds: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def kind_labels(self) -> np.ndarray | None:
        if self.kinds is None:
            return None
        names = sorted(set(self.kinds))
        return np.array([names.index(kind) for kind in self.kinds], dtype=np.int64)


# -- classifiers -----------------------------------------------------------------------------


def load_labelled(request: DataRequest, target_column: str | None = None) -> LabelledData:
    column = target_column or DEFAULT_LABEL_COLUMN
    if request.data_source == "builtin":
        if request.dataset_name != DIGITS:
            raise DataError(
                f"built-in dataset {request.dataset_name!r} is not labelled data; "
                f"classifiers train on {DIGITS!r}"
            )
        data = digits()
    elif request.data_source == "local" and _suffix(request) in ARRAY_SUFFIXES:
        data = labelled_from_arrays(_local_file(request, ARRAY_SUFFIXES), column)
    elif request.data_source == "local":
        data = labelled_from_records(_local_records(request), column)
    elif request.data_source == "huggingface":
        data = labelled_from_table(_huggingface_table(request), column)
    else:
        raise DataError(f"unknown data_source {request.data_source!r}")
    return _capped_labelled(data, request.max_samples)


def digits() -> LabelledData:
    """scikit-learn's 8x8 digits as one-channel images scaled to [0, 1].

    Read from the CSV that scikit-learn ships, the same file ``load_digits`` reads, without
    importing scikit-learn: that import costs every client process most of a second.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("the built-in 'digits' dataset needs scikit-learn installed")
    raw = np.loadtxt(
        Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz",
        delimiter=",",
        dtype=np.float32,
    )
    features = (raw[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    return LabelledData(
        features=features,
        labels=raw[:, -1].astype(np.int64),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
    )


ARRAY_SUFFIXES = (".npz", ".npy")
FEATURE_ARRAY_NAMES = ("features", "x", "X", "images", "data")


def labelled_from_arrays(path: Path, label_column: str) -> LabelledData:
    """A NumPy file, read with ``allow_pickle=False`` (an object array could carry code):
    ``.npz`` with a features array (``features``/``x``/``images``/``data``) and a labels array
    (``label``/``labels``/``y``, or ``target_column``); ``.npy`` is features alone (every label
    0, for inference)."""
    try:
        features, labels = _numpy_arrays(path, label_column)
    except (ValueError, OSError) as error:  # object arrays (would need pickle), bad files
        raise DataError(f"cannot read {path.name} as NumPy data: {error}") from error
    if not np.issubdtype(features.dtype, np.number) or features.ndim < 2:
        raise DataError(f"{path.name}: features must be a numeric array of shape [n, ...]")
    if len(labels) != len(features):
        raise DataError(f"{path.name}: {len(features)} feature rows but {len(labels)} labels")
    features = features.astype(np.float32)
    if not np.isfinite(features).all():
        raise DataError("the features hold NaN or infinite values")
    encoded, class_names = _encode_labels(labels.tolist())
    return LabelledData(features, encoded, len(class_names), class_names)


def _numpy_arrays(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded, np.zeros(len(loaded), dtype=np.int64)
    with loaded:
        names = set(loaded.files)
        feature_name = next((n for n in FEATURE_ARRAY_NAMES if n in names), None)
        label_name = next((n for n in (label_column, "labels", "y") if n in names), None)
        if feature_name is None or label_name is None:
            raise DataError(
                f"{path.name} must hold a features array ({', '.join(FEATURE_ARRAY_NAMES)}) "
                f"and a labels array ({label_column!r}, 'labels' or 'y'); it has {sorted(names)}"
            )
        return loaded[feature_name], loaded[label_name]


def labelled_from_records(records: list[dict[str, Any]], label_column: str) -> LabelledData:
    """Rows of named values: the label column and every other column as a numeric feature."""
    if not records:
        raise DataError("the dataset has no rows")
    feature_columns = [name for name in records[0] if name != label_column]
    if label_column not in records[0]:
        raise DataError(
            f"the dataset has no label column {label_column!r}; it has {sorted(records[0])} "
            "(set target_column)"
        )
    if not feature_columns:
        raise DataError("the dataset has a label column but no feature columns")
    rows = []
    for number, record in enumerate(records, start=1):
        try:
            rows.append([float(record[name]) for name in feature_columns])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(
                f"row {number}: every column but {label_column!r} must be a number ({error})"
            ) from error
    features = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(features).all():
        raise DataError("the features hold NaN or infinite values")
    labels, names = _encode_labels([record[label_column] for record in records])
    return LabelledData(features, labels, len(names), names)


def labelled_from_table(table: Any, label_column: str) -> LabelledData:
    """A ``datasets.Dataset``: an image column becomes grayscale pixels in [0, 1]; otherwise
    the numeric columns are the features."""
    columns = list(table.column_names)
    if label_column not in columns:
        raise DataError(
            f"the dataset has no label column {label_column!r}; it has {columns} "
            "(set target_column)"
        )
    image_column = next(
        (name for name in columns if type(table.features[name]).__name__ == "Image"), None
    )
    labels, names = _encode_labels(list(table[label_column]))
    if image_column is not None:
        images = [record[image_column] for record in table]
        pixels = [np.asarray(image.convert("L"), dtype=np.float32) / 255.0 for image in images]
        if len({p.shape for p in pixels}) != 1:
            raise DataError(f"images in column {image_column!r} differ in size")
        features = np.stack(pixels)[:, None, :, :]
        return LabelledData(features, labels, len(names), names)
    records = [
        {
            name: record[name]
            for name in columns
            if _is_numeric(record[name]) or name == label_column
        }
        for record in table
    ]
    return labelled_from_records(records, label_column)


def _is_numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _encode_labels(values: list[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer labels 0..k-1 kept as they are; anything else mapped in sorted order."""
    if any(value is None for value in values):
        raise DataError("some rows have no label")
    if all(isinstance(v, str) and v.strip().isdigit() for v in values):
        values = [int(v) for v in values]  # CSV holds every value as text
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and min(values) >= 0:
        count = max(values) + 1
        return np.asarray(values, dtype=np.int64), tuple(str(i) for i in range(count))
    names = tuple(sorted({str(v) for v in values}))
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index[str(v)] for v in values], dtype=np.int64), names


def _capped_labelled(data: LabelledData, max_samples: int | None) -> LabelledData:
    if max_samples is None or max_samples >= len(data):
        return data
    return LabelledData(
        data.features[:max_samples], data.labels[:max_samples], data.num_classes, data.class_names
    )


# -- text to text ----------------------------------------------------------------------------


def load_pairs(
    request: DataRequest, text_column: str | None = None, target_column: str | None = None
) -> PairData:
    source_column = text_column or DEFAULT_INPUT_COLUMN
    target = target_column or DEFAULT_TARGET_COLUMN
    if request.data_source == "builtin":
        if request.dataset_name != SYNTHETIC_T2T:
            raise DataError(
                f"built-in dataset {request.dataset_name!r} holds no input/target pairs; "
                f"text-to-text models train on {SYNTHETIC_T2T!r}"
            )
        data = synthetic_t2t(request.max_samples or SYNTHETIC_T2T_SIZE)
    elif request.data_source == "local":
        path = _local_file(request)
        data = PairData(tuple(column_texts(path, source_column)), tuple(column_texts(path, target)))
    elif request.data_source == "huggingface":
        table = _huggingface_table(request)
        for name in (source_column, target):
            if name not in table.column_names:
                raise DataError(
                    f"the dataset has no column {name!r}; it has {table.column_names} "
                    "(set text_column and target_column)"
                )
        data = PairData(
            tuple(str(v) for v in table[source_column]), tuple(str(v) for v in table[target])
        )
    else:
        raise DataError(f"unknown data_source {request.data_source!r}")
    if len(data.inputs) != len(data.targets):
        raise DataError("the input and target columns have different lengths")
    if not data.inputs:
        raise DataError("the dataset has no input/target pairs")
    cap = request.max_samples
    if cap is not None and cap < len(data):
        kinds = data.kinds[:cap] if data.kinds else None
        data = PairData(data.inputs[:cap], data.targets[:cap], kinds)
    return data


def synthetic_t2t(size: int, seed: int = 0) -> PairData:
    """Reverse a word, sort digits, add two numbers: small tasks whose answers are exact, so
    exact match measures learning. The same ``(size, seed)`` gives the same pairs everywhere."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    inputs, targets, kinds = [], [], []
    for index in range(size):
        kind = SYNTHETIC_T2T_TASKS[index % len(SYNTHETIC_T2T_TASKS)]
        if kind == "reverse":
            word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 7)))
            source, answer = f"reverse: {word}", word[::-1]
        elif kind == "sort":
            digits_ = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
            source, answer = f"sort: {' '.join(digits_)}", " ".join(sorted(digits_))
        else:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            source, answer = f"add: {a} + {b}", str(a + b)
        inputs.append(source)
        targets.append(answer)
        kinds.append(kind)
    return PairData(tuple(inputs), tuple(targets), tuple(kinds))


# -- sources ---------------------------------------------------------------------------------


def _suffix(request: DataRequest) -> str:
    return Path(request.path or "").suffix.lower()


def _local_file(request: DataRequest, suffixes: tuple[str, ...] = RECORD_SUFFIXES) -> Path:
    _, target = local_target(request)
    if not target.is_file():
        raise DataError(f"local data file {request.path!r} does not exist under the data root")
    if target.suffix.lower() not in suffixes:
        raise DataError(f"cannot read {request.path!r}: use a {', '.join(suffixes)} file")
    return target


def _local_records(request: DataRequest) -> list[dict[str, Any]]:
    records = read_records(_local_file(request))
    if not all(isinstance(record, dict) for record in records):
        raise DataError(f"{request.path!r} must hold records with named fields")
    return records


def _huggingface_table(request: DataRequest) -> Any:
    split = request.split or "train"
    described = (
        f"{request.dataset_name!r}"
        + (f" (config {request.dataset_config!r})" if request.dataset_config else "")
        + f" split {split!r}"
    )
    table = hub_datasets.load_hub_dataset(
        request.dataset_name, request.dataset_config, split, described
    )
    if request.max_samples is not None and request.max_samples < len(table):
        table = table.select(range(request.max_samples))
    return table
