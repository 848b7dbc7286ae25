"""The registered training strategies as a node runs them: adding a mode is its rules
(``protocol.strategies``), one package here and one line below."""

from __future__ import annotations

from protocol.strategies.registry import RULES, get_rules
from ray_module.strategies.base import TrainingStrategy
from ray_module.strategies.data_parallel.strategy import DataParallelStrategy
from ray_module.strategies.es.strategy import ESStrategy
from ray_module.strategies.fedavg.strategy import FedAvgStrategy
from ray_module.strategies.split.strategy import SplitStrategy

STRATEGIES: dict[str, TrainingStrategy] = {
    strategy.name: strategy
    for strategy in (DataParallelStrategy(), FedAvgStrategy(), ESStrategy(), SplitStrategy())
}
assert STRATEGIES.keys() == RULES.keys(), "every mode's rules have a strategy, and back"


def get_strategy(name: str) -> TrainingStrategy:
    """The node side's strategy of a mode (an unknown name is refused as the rules refuse it)."""
    return STRATEGIES[get_rules(name).name]
