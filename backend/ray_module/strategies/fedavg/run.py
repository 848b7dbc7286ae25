"""Strategy ``fedavg``: federated averaging over client host actors on the placed nodes.

The runner's thread is the server: it starts one ``ClientHost`` per planned worker (clients
are dealt to hosts round-robin), resumes from the job's checkpoint if there is one, runs the
rounds, and emits metrics, usage (accepted work only), checkpoints and the final model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protocol.events import ArtifactEvent, CheckpointEvent, MetricEvent
from protocol.run import PublishTarget, RunConfig, WorkerPlan
from protocol.strategies.fedavg import FedAvgSettings, parse_fedavg_settings
from protocol.trust import check_rate_for, share_weight, weighted_split
from ray_module.contract import RunContext
from ray_module.errors import StartupError
from ray_module.storage.gateway_files import fetch_inputs, publish_directory
from ray_module.strategies.actor_pool import first_alive
from ray_module.strategies.base import CHECKPOINT_DIR
from ray_module.strategies.fedavg.aggregate import server_optimizer
from ray_module.strategies.fedavg.checkpoint import (
    FederatedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from ray_module.strategies.fedavg.client import ClientHost, HostConfig, class_order
from ray_module.strategies.fedavg.server import (
    FedAvgServer,
    Host,
    NotEnoughClientsError,
    check_round_fits,
)
from ray_module.strategies.fedavg.verification import FedAvgVerifier
from ray_module.warm.claim import Slot, start_actors

HOST_START_TIMEOUT_S = 600


def run_fedavg(config: RunConfig, context: RunContext) -> None:
    config = fetch_inputs(config)  # the gateway's checkpoint, where nodes share no disk
    settings = parse_fedavg_settings(config.training)
    hosts = start_hosts(config, settings)
    describe_clients(hosts, context)
    checkpoint_dir = Path(config.job_dir) / CHECKPOINT_DIR
    resumed = load_checkpoint(checkpoint_dir)
    optimizer = server_optimizer(
        settings.server_optimizer, settings.server_learning_rate, settings.server_momentum
    )
    if resumed is not None:
        weights, first_round = resumed.weights, resumed.round + 1
        optimizer.velocity = resumed.velocity
    else:
        weights, first_round = initial_weights(hosts), 1
    check_round_fits(settings, weights, sum(plan.memory_gb for plan in config.workers))
    verifier = None
    if settings.partition != "node_local":  # no other host holds a node-local client's data
        verifier = FedAvgVerifier(settings.seed, lambda: referee_host(config, settings))
    server = FedAvgServer(
        hosts, settings, optimizer, check_cancelled=context.check_cancelled, verifier=verifier
    )
    for round_number in range(first_round, settings.rounds + 1):
        context.check_cancelled()
        result = server.run_round(round_number, weights)
        weights = result.weights
        context.emit(MetricEvent(round_number, result.metrics))
        for credit in result.credits:
            context.emit(credit.usage_event(round_number))
        if round_number % settings.checkpoint_interval == 0 or round_number == settings.rounds:
            save_checkpoint(
                checkpoint_dir, FederatedCheckpoint(round_number, weights, optimizer.velocity)
            )
            publish_directory(config.publish, "checkpoint", checkpoint_dir)
            context.emit(CheckpointEvent(round_number, str(checkpoint_dir)))
        for verdict in result.verdicts:  # after the checkpoint: a valid one releases it too
            context.emit(verdict)
    final = save_final_model(hosts, weights, Path(config.job_dir) / "model", config.publish)
    context.emit(ArtifactEvent(final))


def assign_clients(clients: int, plans: Sequence[WorkerPlan]) -> list[tuple[int, ...]]:
    """Deal clients to hosts round-robin (alike hosts: host h serves clients h, h + hosts,
    ...), a host on probation only until it has a quarter of a trusted host's count."""
    counts = weighted_split(clients, [share_weight(check_rate_for(p.valid_streak)) for p in plans])
    dealt: list[list[int]] = [[] for _ in plans]
    client = 0
    while client < clients:
        for host, count in enumerate(counts):
            if client < clients and len(dealt[host]) < count:
                dealt[host].append(client)
                client += 1
    return [tuple(served) for served in dealt if served]


def start_hosts(config: RunConfig, settings: FedAvgSettings) -> list[Host]:
    if not config.workers:
        raise StartupError("fedavg needs at least one placed worker")
    dealt = list(
        zip(config.workers, assign_clients(settings.clients, config.workers), strict=False)
    )
    handles = start_actors(
        ClientHost,
        [Slot(plan.node_id, plan.cpu_cores, plan.gpu) for plan, _ in dealt],
        [(host_config(config, settings, plan, clients),) for plan, clients in dealt],
    )
    hosts = [
        Host(
            handle,
            plan.node_id,
            plan.gpu,
            plan.cpu_cores,
            plan.memory_gb,
            owner_id=plan.owner_id,
            valid_streak=plan.valid_streak,
            clients=clients,
        )
        for handle, (plan, clients) in zip(handles, dealt, strict=True)
    ]
    wait_until_ready(hosts, settings)
    return hosts


def host_config(
    config: RunConfig, settings: FedAvgSettings, plan: WorkerPlan, clients: tuple[int, ...]
) -> HostConfig:
    return HostConfig(
        job_id=config.job_id,
        node_id=plan.node_id,
        gpu=plan.gpu,
        cpu_cores=plan.cpu_cores,
        memory_gb=plan.memory_gb,
        clients=clients,
        model=config.model,
        data=config.data,
        settings=settings,
    )


def referee_host(config: RunConfig, settings: FedAvgSettings) -> ClientHost:
    """The runner's own host, built the first time a replay disagrees with a client."""
    referee = ClientHost(
        HostConfig(
            job_id=config.job_id,
            node_id=0,
            gpu=0,
            cpu_cores=1,
            memory_gb=1,
            clients=(),
            model=config.model,
            data=config.data,
            settings=settings,
            referee=True,
        )
    )
    referee.check_started()
    return referee


def wait_until_ready(hosts: list[Host], settings: FedAvgSettings) -> None:
    """Every host has loaded its data and built its model. With node-local data the hosts
    first report their files' classes and then build the model over all of them."""
    import ray

    alive = call_hosts(hosts, lambda host: host.handle.ping.remote())
    if settings.partition == "node_local":
        classes = call_hosts(alive, lambda host: host.handle.local_classes.remote())
        union = sorted({name for names in classes.values() for name in names}, key=class_order)
        call_hosts(alive, lambda host: host.handle.build.remote(union))
    for host in hosts:
        if host.alive:
            host.ready = ray.get(host.handle.ready.remote())


def call_hosts(hosts: list[Host], call: Callable[[Host], Any]) -> dict[Host, Any]:
    """``call`` on every live host. A host's own error (its data or model) propagates typed;
    one lost with its node is retryable."""
    import ray

    answers: dict[Host, Any] = {}
    for host in [h for h in hosts if h.alive]:
        try:
            answers[host] = ray.get(call(host), timeout=HOST_START_TIMEOUT_S)
        except ray.exceptions.RayTaskError:
            raise  # the host's own error, typed: the runner decides whether to retry
        except ray.exceptions.RayActorError as error:
            raise NotEnoughClientsError(f"a client host on node {host.node_id} died") from error
        except ray.exceptions.GetTimeoutError as error:
            raise NotEnoughClientsError(
                f"a client host on node {host.node_id} did not start in {HOST_START_TIMEOUT_S} s"
            ) from error
    return answers


def describe_clients(hosts: list[Host], context: RunContext) -> None:
    """A round-0 record of which node serves which client with how much data."""
    clients: dict[str, Any] = {}
    for host in hosts:
        for client, shard in host.ready["clients"].items():
            clients[str(client)] = {"node_id": host.node_id, **shard}
    context.emit(MetricEvent(0, {"clients": clients}))


def initial_weights(hosts: list[Host]) -> list[Any]:
    """Every host builds the same initial model from the seed; ask the first live one."""
    return first_alive(hosts, lambda host: host.handle.initial_weights.remote())


def save_final_model(
    hosts: list[Host], weights: list[Any], directory: Path, publish: PublishTarget | None
) -> str:
    """Saved (and published) by a live host, on whichever node it runs."""
    import ray

    weights_ref = ray.put(weights)
    return first_alive(
        hosts, lambda host: host.handle.save_model.remote(weights_ref, str(directory), publish)
    )
