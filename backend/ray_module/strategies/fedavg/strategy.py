"""Strategy ``fedavg``: federated averaging over client hosts on the placed nodes."""

from __future__ import annotations

from typing import Any

from protocol.run import RunConfig
from protocol.strategies.fedavg import (
    CLIENT_PLACEHOLDER,
    FedAvgSettings,
    parse_fedavg_settings,
)
from ray_module.contract import RunContext
from ray_module.errors import SettingsError
from ray_module.strategies.base import SubmittedJob, TrainingStrategy, slots_of


class FedAvgStrategy(TrainingStrategy):
    name = "fedavg"
    model_types = frozenset({"text_to_text", "classifier"})
    default_for = frozenset({"text_to_text", "classifier"})
    progress_unit = "round"

    def parse_settings(self, training: dict[str, Any]) -> FedAvgSettings:
        return parse_fedavg_settings(training)

    def check_job(self, job: SubmittedJob, settings: FedAvgSettings) -> None:
        if job.num_workers is not None and job.num_workers > settings.clients:
            raise SettingsError(
                f"num_workers ({job.num_workers}) exceeds clients ({settings.clients}): "
                "each worker hosts at least one client",
                "num_workers",
            )
        if settings.partition == "node_local" and (
            job.data_source != "local" or CLIENT_PLACEHOLDER not in (job.data_path or "")
        ):
            raise SettingsError(
                "partition 'node_local' reads each client's own file on its node: use "
                "data_source 'local' with a path containing {client}, e.g. clients/{client}.csv",
                "partition",
            )

    def worker_count(self, job: SubmittedJob, settings: FedAvgSettings) -> int:
        """One client host per whole core (or GPU), at most one per client: fractional-core
        actors would only contend for the same cores, and each costs a torch import; extra
        clients are dealt to the hosts."""
        if job.num_workers:
            return job.num_workers
        return max(1, min(settings.clients, slots_of(job)))

    def total_steps(self, settings: FedAvgSettings) -> int:
        return settings.rounds

    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.fedavg.run import run_fedavg

        run_fedavg(config, context)
