"""Strategy ``fedavg``: federated averaging over client hosts on the placed nodes."""

from __future__ import annotations

from protocol.run import RunConfig
from protocol.strategies.fedavg import FedAvgRules
from ray_module.contract import RunContext
from ray_module.strategies.base import TrainingStrategy


class FedAvgStrategy(FedAvgRules, TrainingStrategy):
    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.fedavg.run import run_fedavg

        run_fedavg(config, context)
