"""Classifier presets ``mlp`` and ``cnn`` in plain torch, and their save/load format.

A classifier is saved as ``model.safetensors`` plus ``classifier_config.json`` (architecture,
input shape, classes), never as a pickle, so a saved directory can be named as a job's
``model_name`` to continue training it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.model_sizes import allowed_overrides
from protocol.run import ModelRequest
from ray_module.errors import ModelError
from ray_module.models.contract import Batch, DataFit, Model, ModelAdapter, PredictOptions
from ray_module.models.scores import ClassifierScore
from ray_module.models.sources import local_model_directory, preset_overrides

# torch where a network is built or run: a split job's runner imports this module's
# helpers to start its workers, and would otherwise spend a second importing torch first.
if TYPE_CHECKING:
    import torch
    from torch import nn

CLASSIFIER_TYPE = "classifier"
PRESETS = ("mlp", "cnn")
CONFIG_FILE = "classifier_config.json"
WEIGHTS_FILE = "model.safetensors"
ALLOWED_OVERRIDES = allowed_overrides("classifier")


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str  # mlp | cnn
    input_shape: tuple[int, ...]
    num_classes: int
    hidden_size: int = 64
    channels: int = 16
    class_names: tuple[str, ...] = ()


def build_classifier(config: ClassifierConfig, seed: int = 0) -> nn.Module:
    """The same ``(config, seed)`` gives the same initial weights on every machine."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    features = math.prod(config.input_shape)
    if config.arch == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, config.hidden_size),
            nn.ReLU(),
            nn.Linear(config.hidden_size, config.num_classes),
        )
    if config.arch == "cnn":
        if len(config.input_shape) != 3:
            raise ModelError(
                f"'cnn' needs image inputs (channels, height, width); this data has features "
                f"of shape {list(config.input_shape)}: use 'mlp'"
            )
        channels, height, width = config.input_shape
        c = config.channels
        pooled = (height // 2) * (width // 2)
        return nn.Sequential(
            nn.Conv2d(channels, c, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * pooled, config.hidden_size),
            nn.ReLU(),
            nn.Linear(config.hidden_size, config.num_classes),
        )
    raise ModelError(f"unknown classifier architecture {config.arch!r}; use one of {PRESETS}")


def resolve_classifier(
    request: ModelRequest,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    class_names: tuple[str, ...] = (),
    seed: int = 0,
    local_root: Path | None = None,
) -> tuple[nn.Module, ClassifierConfig]:
    """A preset sized to the data, or a classifier saved earlier (its shape must fit)."""
    if request.model_type != CLASSIFIER_TYPE:
        raise ModelError(f"model type {request.model_type!r} is not a classifier")
    name = request.model_name.strip()
    if name in PRESETS:
        overrides = preset_overrides(request, ALLOWED_OVERRIDES)
        config = ClassifierConfig(
            arch=name,
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            class_names=class_names,
            **overrides,
        )
        return build_classifier(config, seed), config
    directory = local_model_directory(name, local_root)
    if directory is None:
        raise ModelError(
            f"classifier {name!r} is neither a preset ({', '.join(PRESETS)}) nor a saved "
            "classifier directory under the data root"
        )
    model, config = load_classifier(directory)
    if tuple(config.input_shape) != tuple(input_shape) or config.num_classes != num_classes:
        raise ModelError(
            f"the classifier in {name!r} takes {list(config.input_shape)} inputs and "
            f"{config.num_classes} classes; the data has {list(input_shape)} and {num_classes}"
        )
    return model, config


def save_classifier(model: nn.Module, config: ClassifierConfig, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    payload = {**asdict(config), "input_shape": list(config.input_shape)}
    payload["class_names"] = list(config.class_names)
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2))
    # config.json marks the directory as a saved model for the local-directory resolver.
    (directory / "config.json").write_text(json.dumps({"model_type": "distlm-classifier"}))


def load_classifier(directory: Path) -> tuple[nn.Module, ClassifierConfig]:
    from safetensors.torch import load_file

    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
        config = ClassifierConfig(
            arch=raw["arch"],
            input_shape=tuple(int(x) for x in raw["input_shape"]),
            num_classes=int(raw["num_classes"]),
            hidden_size=int(raw.get("hidden_size", 64)),
            channels=int(raw.get("channels", 16)),
            class_names=tuple(raw.get("class_names", ())),
        )
        model = build_classifier(config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except ModelError:
        raise
    except Exception as error:  # missing files, bad JSON, mismatched tensors
        raise ModelError(f"{str(directory)!r} is not a saved DistLM classifier: {error}") from error
    return model, config


DIGITS = 6  # probabilities are rounded to this many decimals


def classifier_row(
    probabilities: np.ndarray, names: list[str], options: PredictOptions
) -> dict[str, Any]:
    """One sample's prediction: its label, the top k with probabilities, all when asked."""
    order = np.argsort(-probabilities)[: options.top_k]
    row: dict[str, Any] = {
        "label": names[int(order[0])],
        "probability": round(float(probabilities[order[0]]), DIGITS),
        "top_k": [
            {"label": names[int(i)], "probability": round(float(probabilities[i]), DIGITS)}
            for i in order
        ],
    }
    if options.return_full_probabilities:
        row["probabilities"] = [round(float(p), DIGITS) for p in probabilities]
    return row


def class_names_of(config: ClassifierConfig) -> list[str]:
    return list(config.class_names) or [str(i) for i in range(config.num_classes)]


class ClassifierScorer:
    """Accuracy, loss, per-class precision and recall, and the confusion matrix."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.score = ClassifierScore(
            model.companion.num_classes, tuple(class_names_of(model.companion))
        )

    def add(self, batch: Batch) -> None:
        from torch import nn

        logits = self.model.network(batch["features"])
        losses = nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        labels = batch["labels"].cpu().numpy()
        self.score.add(losses.cpu().numpy(), logits.argmax(1).cpu().numpy(), labels)

    def metrics(self) -> dict[str, Any]:
        return self.score.metrics()


class ClassifierAdapter(ModelAdapter):
    """Batches: ``features`` (float, the data's input shape) and ``labels`` (class index)."""

    model_type = CLASSIFIER_TYPE
    batch_keys = ("features", "labels")

    def load(
        self, request: ModelRequest, *, fit: DataFit, seed: int, local_root: Path | None
    ) -> tuple[nn.Module, ClassifierConfig]:
        name = request.model_name.strip()
        if fit.own_classes and name not in PRESETS:
            # Scoring or predicting with a saved classifier: its classes are its own, so
            # only the inputs must fit.
            directory = local_model_directory(name, local_root)
            if directory is not None:
                model, config = load_classifier(directory)
                if tuple(config.input_shape) != tuple(fit.input_shape):
                    raise ModelError(
                        f"the classifier takes {list(config.input_shape)} inputs; the data has "
                        f"{list(fit.input_shape)}"
                    )
                return model, config
        if fit.sizes:
            sized = {**fit.sizes, **request.overrides}
            request = ModelRequest(
                request.model_type, request.model_name, request.pretrained, sized
            )
        return resolve_classifier(
            request,
            input_shape=fit.input_shape,
            num_classes=fit.num_classes,
            class_names=fit.class_names,
            seed=seed,
            local_root=local_root,
        )

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        from torch import nn

        return nn.functional.cross_entropy(model.network(batch["features"]), batch["labels"])

    def scorer(self, model: Model, options: PredictOptions) -> ClassifierScorer:
        return ClassifierScorer(model)

    def predict(self, model: Model, batch: Batch, options: PredictOptions) -> list[dict]:
        import torch

        logits = model.network(batch["features"]).float()
        probabilities = torch.softmax(logits, dim=1).cpu().numpy()
        names = class_names_of(model.companion)
        return [classifier_row(p, names, options) for p in probabilities]

    def save(self, model: Model, directory: Path) -> None:
        save_classifier(model.unwrapped.cpu(), model.companion, directory)
        model.unwrapped.to(model.device)
