"""The registered training strategies: adding a mode is one package and one line here."""

from __future__ import annotations

from ray_module.errors import SettingsError
from ray_module.strategies.base import TrainingStrategy
from ray_module.strategies.data_parallel.strategy import DataParallelStrategy
from ray_module.strategies.es.strategy import ESStrategy
from ray_module.strategies.fedavg.strategy import FedAvgStrategy

STRATEGIES: dict[str, TrainingStrategy] = {
    strategy.name: strategy for strategy in (DataParallelStrategy(), FedAvgStrategy(), ESStrategy())
}


def get_strategy(name: str) -> TrainingStrategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise SettingsError(f"unknown strategy '{name}' (known: {known})", "strategy") from None


def default_strategy(model_type: str) -> TrainingStrategy:
    for strategy in STRATEGIES.values():
        if model_type in strategy.default_for:
            return strategy
    raise SettingsError(f"no strategy trains model type '{model_type}'", "strategy")


def trainable_model_types() -> frozenset[str]:
    return frozenset(t for strategy in STRATEGIES.values() for t in strategy.model_types)
