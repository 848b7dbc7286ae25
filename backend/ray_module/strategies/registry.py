"""The registered training strategies: adding a mode is one package and one line here."""

from __future__ import annotations

from ray_module.errors import SettingsError
from ray_module.strategies.base import TrainingStrategy
from ray_module.strategies.data_parallel.strategy import DataParallelStrategy
from ray_module.strategies.es.strategy import ESStrategy
from ray_module.strategies.fedavg.strategy import FedAvgStrategy
from ray_module.strategies.split.strategy import SplitStrategy

STRATEGIES: dict[str, TrainingStrategy] = {
    strategy.name: strategy
    for strategy in (DataParallelStrategy(), FedAvgStrategy(), ESStrategy(), SplitStrategy())
}


def get_strategy(name: str) -> TrainingStrategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise SettingsError(f"unknown strategy '{name}' (known: {known})", "strategy") from None


def default_strategy(model_type: str, task: str = "train") -> TrainingStrategy:
    """The mode a job runs in when it names none: its model type's default for training,
    otherwise the first strategy that runs the task for that model type."""
    for strategy in STRATEGIES.values():
        if task == "train" and model_type in strategy.default_for:
            return strategy
    for strategy in STRATEGIES.values():
        if task != "train" and task in strategy.tasks and model_type in strategy.model_types:
            return strategy
    raise SettingsError(f"no strategy runs task '{task}' for model type '{model_type}'", "strategy")


def trainable_model_types() -> frozenset[str]:
    return frozenset(t for strategy in STRATEGIES.values() for t in strategy.model_types)
