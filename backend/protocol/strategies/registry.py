"""The registered modes' rules: adding a mode is its rules here and its strategy on the node
side (``ray_module.strategies.registry``), one line each."""

from __future__ import annotations

from protocol.errors import SettingsError
from protocol.strategies.data_parallel import DataParallelRules
from protocol.strategies.es import ESRules
from protocol.strategies.fedavg import FedAvgRules
from protocol.strategies.rules import StrategyRules
from protocol.strategies.split import SplitRules

RULES: dict[str, StrategyRules] = {
    rules.name: rules for rules in (DataParallelRules(), FedAvgRules(), ESRules(), SplitRules())
}


def get_rules(name: str) -> StrategyRules:
    try:
        return RULES[name]
    except KeyError:
        known = ", ".join(sorted(RULES))
        raise SettingsError(f"unknown strategy '{name}' (known: {known})", "strategy") from None


def default_rules(model_type: str, task: str = "train") -> StrategyRules:
    """The mode a job runs in when it names none: its model type's default for training,
    otherwise the first mode that runs the task for that model type."""
    for rules in RULES.values():
        if task == "train" and model_type in rules.default_for:
            return rules
    for rules in RULES.values():
        if task != "train" and task in rules.tasks and model_type in rules.model_types:
            return rules
    raise SettingsError(f"no strategy runs task '{task}' for model type '{model_type}'", "strategy")


def trainable_model_types() -> frozenset[str]:
    return frozenset(t for rules in RULES.values() for t in rules.model_types)
