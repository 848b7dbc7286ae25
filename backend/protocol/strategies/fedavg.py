"""The ``training_config`` knobs of strategy ``fedavg``, checked once.

``parse_fedavg_settings`` is called at submit (bad values are a 422 there) and again by the
runner, so both agree on defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from protocol.errors import SettingsError
from protocol.run import JobRequest
from protocol.strategies.knobs import KnobRules, parse_knobs
from protocol.strategies.rules import StrategyRules, slots_of

PARTITIONS = ("iid", "dirichlet", "node_local")
CLIENT_PLACEHOLDER = "{client}"  # in a node-local path: the client's number
SERVER_OPTIMIZERS = ("fedavg", "fedavgm")
CLIENT_OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class FedAvgSettings:
    rounds: int = 10
    clients: int = 2
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float | None = None  # None: the task's default
    client_optimizer: str | None = None  # None: sgd for classifiers, adamw for text-to-text
    fraction_fit: float = 1.0
    min_fit_clients: int | None = None  # None: half of the clients, at least one
    min_available_clients: int | None = None  # None: min_fit_clients
    round_timeout_s: float = 600.0
    max_round_retries: int = 3
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9
    proximal_mu: float = 0.0
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    seed: int = 0
    checkpoint_interval: int = 1
    # text-to-text
    max_source_length: int = 64
    max_target_length: int = 32
    num_beams: int = 1
    eval_samples: int = 64
    # classifier presets
    hidden_size: int | None = None

    @property
    def fit_minimum(self) -> int:
        return self.min_fit_clients or max(1, self.clients // 2)

    @property
    def available_minimum(self) -> int:
        return self.min_available_clients or self.fit_minimum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RULES = KnobRules(
    strategy="fedavg",
    ints={
        "rounds": (1, 100_000),
        "clients": (1, 10_000),
        "local_epochs": (1, 10_000),
        "batch_size": (1, 65_536),
        "min_fit_clients": (1, 10_000),
        "min_available_clients": (1, 10_000),
        "max_round_retries": (0, 100),
        "seed": (0, 2**31 - 1),
        "checkpoint_interval": (1, 100_000),
        "max_source_length": (2, 4096),
        "max_target_length": (2, 4096),
        "num_beams": (1, 32),
        "eval_samples": (1, 100_000),
        "hidden_size": (1, 65_536),
    },
    positive={
        "learning_rate": (0.0, 10.0),
        "fraction_fit": (0.0, 1.0),
        "round_timeout_s": (0.0, 7 * 24 * 3600.0),
        "server_learning_rate": (0.0, 100.0),
        "dirichlet_alpha": (0.0, 1e6),
    },
    non_negative={"server_momentum": (0.0, 0.999999), "proximal_mu": (0.0, 1000.0)},
    choices={
        "partition": PARTITIONS,
        "server_optimizer": SERVER_OPTIMIZERS,
        "client_optimizer": CLIENT_OPTIMIZERS,
    },
    elsewhere={
        "epochs": "local_epochs (per round) and rounds",
        "max_steps": "rounds",
        "seq_len": "max_source_length / max_target_length",
    },
)


def parse_fedavg_settings(training: dict[str, Any]) -> FedAvgSettings:
    """Check every key and value; raise SettingsError naming the field."""
    values = parse_knobs(training, RULES, (f.name for f in fields(FedAvgSettings)))
    settings = FedAvgSettings(**values)
    if settings.fit_minimum > settings.clients:
        raise SettingsError(
            f"min_fit_clients ({settings.fit_minimum}) exceeds clients ({settings.clients})",
            "min_fit_clients",
        )
    if settings.available_minimum > settings.clients:
        raise SettingsError(
            f"min_available_clients ({settings.available_minimum}) exceeds clients "
            f"({settings.clients})",
            "min_available_clients",
        )
    if settings.available_minimum < settings.fit_minimum:
        raise SettingsError(
            "min_available_clients must be at least min_fit_clients", "min_available_clients"
        )
    return settings


class FedAvgRules(StrategyRules):
    name = "fedavg"
    model_types = frozenset({"text_to_text", "classifier"})
    default_for = frozenset({"text_to_text", "classifier"})
    progress_unit = "round"

    def parse_settings(self, training: dict[str, Any]) -> FedAvgSettings:
        return parse_fedavg_settings(training)

    def check_job(self, job: JobRequest, settings: FedAvgSettings) -> None:
        if job.num_workers is not None and job.num_workers > settings.clients:
            raise SettingsError(
                f"num_workers ({job.num_workers}) exceeds clients ({settings.clients}): "
                "each worker hosts at least one client",
                "num_workers",
            )
        if settings.partition == "node_local" and (
            job.data.data_source != "local" or CLIENT_PLACEHOLDER not in (job.data.path or "")
        ):
            raise SettingsError(
                "partition 'node_local' reads each client's own file on its node: use "
                "data_source 'local' with a path containing {client}, e.g. clients/{client}.csv",
                "partition",
            )

    def worker_count(self, job: JobRequest, settings: FedAvgSettings) -> int:
        """One client host per whole core (or GPU), at most one per client: fractional-core
        actors would only contend for the same cores, and each costs a torch import; extra
        clients are dealt to the hosts."""
        if job.num_workers:
            return job.num_workers
        return max(1, min(settings.clients, slots_of(job)))

    def total_steps(self, settings: FedAvgSettings) -> int:
        return settings.rounds
