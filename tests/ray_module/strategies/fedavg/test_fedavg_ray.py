"""Federated averaging on Ray: stragglers, lost clients and resuming on the shared multi-node
cluster, and whole jobs through the API (accuracy, credit, a node killed mid-job)."""

from __future__ import annotations

import io
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from protocol.events import MetricEvent
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan
from protocol.strategies.fedavg import parse_fedavg_settings
from ray_module.resources import node_resource
from ray_module.runner.job_runner import JobRunner
from ray_module.strategies.fedavg.aggregate import server_optimizer
from ray_module.strategies.fedavg.client import ClientHost, HostConfig
from ray_module.strategies.fedavg.run import run_fedavg
from ray_module.strategies.fedavg.server import FedAvgServer, Host, NotEnoughClientsError
from tests.agent_pool import AgentPool
from tests.conftest import job_state, start_node, wait_until_finished
from tests.live_gateway import LiveGateway
from tests.polling import wait_for
from tests.ray_state import list_actors

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MLP = ModelRequest("classifier", "mlp")
DIGITS = DataRequest("builtin", "digits", validation_split=0.2)


# Longer than any test runs: a client that sleeps this long never answers while it is watched
# (its actor is killed at the end of the test).
NEVER_S = 3600


def slow_host_class(
    slow_clients: tuple[int, ...], delay_s: float, started_dir: Path | None = None
) -> Any:
    """A real client host whose listed clients take ``delay_s`` longer to answer, and leave a
    file ``client-<c>-round-<r>`` in ``started_dir`` when they start (defined in a function
    so Ray ships the class by value to its workers; the test's nodes share this machine)."""
    import ray

    class SlowClientHost(ClientHost):
        def fit(self, client: int, round_number: int, weights: list) -> dict[str, Any]:
            if client in slow_clients:
                if started_dir is not None:
                    (started_dir / f"client-{client}-round-{round_number}").touch()
                time.sleep(delay_s)
            return super().fit(client, round_number, weights)

    return ray.remote(SlowClientHost)


def start_hosts(actor_class: Any, training: dict, nodes: list[int]) -> list[Host]:
    import ray

    settings = parse_fedavg_settings(training)
    hosts = []
    for index, node_id in enumerate(nodes):
        config = HostConfig(
            job_id=0,
            node_id=node_id,
            gpu=0,
            cpu_cores=0.5,
            memory_gb=0.5,
            clients=(index,),
            model=MLP,
            data=DIGITS,
            settings=settings,
        )
        handle = actor_class.options(
            num_cpus=0.5, resources={node_resource(node_id): 0.001}
        ).remote(config)
        hosts.append(Host(handle, node_id, 0, 0.5, 0.5, clients=(index,)))
    ray.get([h.handle.ready.remote() for h in hosts])
    return hosts


def test_a_straggler_beyond_the_round_timeout_is_dropped_and_the_round_completes(
    ray_cluster,
) -> None:
    import ray

    training = {"clients": 3, "min_fit_clients": 2, "round_timeout_s": 4, "local_epochs": 1}
    # Client 2 answers after 120 s: a round that waited for it would take that long, and
    # one that did not is over long before, on however busy a machine.
    hosts = start_hosts(slow_host_class((2,), delay_s=120), training, [1, 2, 1])
    try:
        settings = parse_fedavg_settings(training)
        server = FedAvgServer(hosts, settings, server_optimizer("fedavg", 1.0, 0.0))
        weights = ray.get(hosts[0].handle.initial_weights.remote())

        started = time.monotonic()
        first = server.run_round(1, weights)
        # It waited the round timeout for the straggler, and no longer.
        assert 4 <= time.monotonic() - started < 60
        metrics = first.metrics
        assert (metrics["clients_sampled"], metrics["clients_returned"]) == (3, 2)
        assert metrics["clients_dropped"] == 1 and metrics["clients_accepted"] == 2
        assert "validation_accuracy" in metrics
        # Only the two clients that answered are credited (plus the evaluation).
        assert len(first.credits) == 3  # two accepted fits and the evaluation
        assert metrics["node_seconds"].keys() == {"1", "2"}

        # Next round (well within its 120 s) the straggler is still busy: the others carry
        # on without it.
        second = server.run_round(2, first.weights)
        assert second.metrics["clients_sampled"] == 2 and second.metrics["clients_dropped"] == 0
    finally:
        for host in hosts:
            ray.kill(host.handle)


def test_a_client_that_dies_mid_round_is_data_and_too_few_clients_stop_the_run(
    ray_cluster, tmp_path: Path
) -> None:
    import ray

    training = {"clients": 3, "min_fit_clients": 2, "round_timeout_s": 60}
    hosts = start_hosts(slow_host_class((1,), NEVER_S, started_dir=tmp_path), training, [1, 2, 1])
    try:
        server = FedAvgServer(
            hosts, parse_fedavg_settings(training), server_optimizer("fedavg", 1.0, 0.0)
        )
        weights = ray.get(hosts[0].handle.initial_weights.remote())

        with ThreadPoolExecutor(max_workers=1) as pool:
            round_one = pool.submit(server.run_round, 1, weights)
            # Client 1's host dies while it trains in the round.
            wait_for(
                lambda: (tmp_path / "client-1-round-1").exists() or round_one.done(),
                timeout_s=120,
                what="client 1 to start training in round 1",
            )
            assert not round_one.done(), round_one.result()
            ray.kill(hosts[1].handle)
            result = round_one.result(timeout=120)
        assert result.metrics["clients_failed"] == 1 and result.metrics["clients_accepted"] == 2
        assert hosts[1].alive is False
        assert "2" not in result.metrics["node_seconds"]  # the dead client's node earns nothing

        ray.kill(hosts[2].handle)
        with pytest.raises(NotEnoughClientsError, match="only 1 clients are alive"):
            server.run_round(2, result.weights)
    finally:
        for host in hosts:
            ray.kill(host.handle)


# -- through the API ------------------------------------------------------------------------------

DIGITS_JOB = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits", "validation_split": 0.2},
    "training_config": {
        "strategy": "fedavg",
        "rounds": 10,
        "clients": 4,
        "local_epochs": 2,
        "batch_size": 32,
        "learning_rate": 0.1,
    },
    "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 2},
    "max_runtime_s": 900,
}


def rounds_of(client: TestClient, headers: dict, job_id: int) -> list[dict]:
    series = client.get(f"/metrics/training/{job_id}", headers=headers).json()["series"]
    return [p for p in series if p["step"] > 0]


def client_nodes(client: TestClient, headers: dict, job_id: int) -> dict[str, int]:
    """Each client's node, as the job's step-0 record lists them."""
    series = client.get(f"/metrics/training/{job_id}", headers=headers).json()["series"]
    clients = next(p["values"]["clients"] for p in series if p["step"] == 0)
    return {name: shard["node_id"] for name, shard in clients.items()}


def client_host_actors() -> dict[str, str]:
    """Ray's own record of every client host actor in the session: its id and its Ray node."""
    hosts = list_actors(("class_name", "=", "ClientHost"))
    return {actor.actor_id: actor.node_id for actor in hosts}


def test_digits_mlp_with_four_clients_reaches_90_percent_and_pays_the_nodes(
    ray_client: LiveGateway, ray_cluster, two_nodes, make_account
) -> None:
    client, (_, ray_nodes), (owner, _) = ray_client, ray_cluster, two_nodes
    user = make_account("alice")
    earlier = client_host_actors()
    job = client.post("/jobs/submit", headers=user.headers, json=DIGITS_JOB).json()
    done = wait_until_finished(client, user.headers, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    # Where the clients ran (step 0 names each client's node): four, two on each machine.
    nodes = client_nodes(client, user.headers, job["id"])
    assert sorted(nodes) == ["0", "1", "2", "3"], nodes
    assert sorted(nodes.values()) == [1, 1, 2, 2], nodes
    # ...and where Ray ran them: one host actor per client, two on each machine.
    distlm_node = {ray_node.node_id: node_id for node_id, ray_node in ray_nodes.items()}
    ran = [
        distlm_node.get(ray_node)
        for actor, ray_node in client_host_actors().items()
        if actor not in earlier
    ]
    assert sorted(ran, key=str) == [1, 1, 2, 2], ran

    rounds = rounds_of(client, user.headers, job["id"])
    assert [p["step"] for p in rounds] == list(range(1, 11))
    accuracies = [p["values"]["validation_accuracy"] for p in rounds]
    assert max(accuracies) >= 0.90, accuracies
    last = rounds[-1]["values"]
    assert last["clients_sampled"] == last["clients_returned"] == 4
    assert last["bytes_moved"] == last["bytes_down"] + last["bytes_up"] > 0
    assert last["train_loss"] < rounds[0]["values"]["train_loss"]
    assert {"validation_loss", "round_seconds", "clients_dropped"} <= last.keys()

    # Each client's node was credited for accepted work; the user paid, the owner earned.
    assert sorted(done["usage"]) == ["1", "2"]
    spent = client.get("/tokens/balance/me", headers=user.headers).json()["spent"]
    earned = client.get("/tokens/balance/me", headers=owner.headers).json()["earned"]
    assert spent > 0 and 0 < earned < spent
    # Honest hosts, new: clients' updates were replayed on the other node, and all held.
    for node in (1, 2):
        trust = client.get(f"/nodes/{node}", headers=owner.headers).json()["trust"]
        assert trust["results_invalid"] == 0 and trust["results_valid"] >= 5, trust

    archive = client.get(f"/jobs/{job['id']}/artifacts", headers=user.headers)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as packed:
        names = packed.getnames()
    assert f"job-{job['id']}-model/model.safetensors" in names
    assert f"job-{job['id']}-model/classifier_config.json" in names

    # A second job continues from this one's model: its first round is already accurate.
    more = {
        **DIGITS_JOB,
        "model_config": {"type": "classifier", "model_name": f"job:{job['id']}"},
        "training_config": {**DIGITS_JOB["training_config"], "rounds": 1},
    }
    again = client.post("/jobs/submit", headers=user.headers, json=more).json()
    finished_again = wait_until_finished(client, user.headers, again["id"])
    assert finished_again["status"] == "succeeded", finished_again["status_reason"]
    continued = rounds_of(client, user.headers, again["id"])[0]["values"]
    assert continued["validation_accuracy"] >= 0.85 > rounds[0]["values"]["validation_accuracy"]


def test_tiny_t5_on_synthetic_t2t_lowers_its_loss(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client = ray_client
    user = make_account("alice")
    body = {
        "model_config": {"type": "text_to_text", "model_name": "tiny-t5"},
        "data_config": {
            "data_source": "builtin",
            "dataset_name": "synthetic-t2t",
            "max_samples": 400,
        },
        "training_config": {
            "rounds": 3,
            "clients": 2,
            "batch_size": 16,
            "learning_rate": 0.003,
            "eval_samples": 8,
            "num_beams": 2,
        },
        "requirements": {"gpu": 0, "cpu_cores": 2, "memory": 2},
        "max_runtime_s": 900,
    }
    job = client.post("/jobs/submit", headers=user.headers, json=body).json()
    assert job["strategy"] == "fedavg"  # the default for text_to_text
    done = wait_until_finished(client, user.headers, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    rounds = [p["values"] for p in rounds_of(client, user.headers, job["id"])]
    assert len(rounds) == 3
    assert rounds[-1]["validation_loss"] < rounds[0]["validation_loss"]
    assert rounds[-1]["train_loss"] < rounds[0]["train_loss"]
    assert "validation_exact_match" in rounds[-1]
    assert {"input", "target", "prediction"} == set(rounds[-1]["samples"][0])


def test_killing_a_clients_node_mid_job_finishes_with_the_others_and_the_dead_node_earns_nothing_more(  # noqa: E501
    ray_client: LiveGateway, agent_pool: AgentPool, two_nodes, make_account
) -> None:
    client, (owner, _) = ray_client, two_nodes
    user = make_account("alice")
    agent_pool.add_machine(3)
    start_node(client, agent_pool, owner.headers, "spare")
    body = {
        **DIGITS_JOB,
        "training_config": {
            **DIGITS_JOB["training_config"],
            "clients": 3,
            # Node 2 dies in round 3 or so; the rounds after it show it earns nothing more.
            "rounds": 8,
            "local_epochs": 40,
            "min_fit_clients": 2,
            # Long enough that no live client on two busy cores is dropped as a straggler,
            # short enough that the round which lost node 2's client ends soon after.
            "round_timeout_s": 20,
        },
        "requirements": {"gpu": 0, "cpu_cores": 6, "memory": 3},
    }
    job = client.post("/jobs/submit", headers=user.headers, json=body).json()
    wait_for(
        lambda: len(rounds_of(client, user.headers, job["id"])) >= 2,
        what=lambda: job_state(client, user.headers, job["id"]),
    )
    placed = job_state(client, user.headers, job["id"])["placement"]
    assert sorted(p["node_id"] for p in placed) == [1, 2, 3]  # one client per node
    before_loss = len(rounds_of(client, user.headers, job["id"]))
    agent_pool.lose(2)  # the machine behind node 2 dies mid-job
    done = wait_until_finished(client, user.headers, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["attempts"] == 1  # finished with the other clients, no restart

    rounds = [p["values"] for p in rounds_of(client, user.headers, job["id"])]
    assert len(rounds) == 8
    # The round that lost node 2's client: the first after the kill with a failed or dropped
    # client that credits node 2 nothing (a straggler dropped under load, node 2's in a round
    # before the kill included, does not count).
    lost = next(
        i
        for i, r in enumerate(rounds)
        if i >= before_loss
        and r["clients_failed"] + r["clients_dropped"] > 0
        and "2" not in r["node_seconds"]
    )
    # The round that lost node 2's client, and every round after, credit node 2 nothing.
    assert all("2" not in r["node_seconds"] for r in rounds[lost:])
    assert all(r["clients_accepted"] >= 2 for r in rounds)
    # Node 2 was paid for exactly the accepted work of the rounds before (2 cores each).
    credited = sum(r["node_seconds"].get("2", 0.0) for r in rounds[:lost])
    assert done["usage"]["2"]["cpu_core_seconds"] == pytest.approx(2 * credited, rel=1e-6)
    admin = make_account("root", Role.ADMIN)
    ledger = client.get("/metrics/system", headers=admin.headers).json()["ledger"]
    assert ledger["invariant_ok"], ledger["problems"]


def test_node_local_files_train_one_model_over_every_clients_classes(
    ray_cluster, tmp_path: Path
) -> None:
    from ray_module.data.examples import digits

    data = digits()
    flat = data.features.reshape(len(data), 64)
    (tmp_path / "clients").mkdir()
    for client, wanted in enumerate([range(0, 5), range(5, 10)]):  # disjoint label sets
        rows = [i for i in range(len(data)) if data.labels[i] in wanted]
        lines = [",".join(f"p{j}" for j in range(64)) + ",label"]
        lines += [",".join(f"{v:g}" for v in flat[i]) + f",{data.labels[i]}" for i in rows]
        (tmp_path / "clients" / f"{client}.csv").write_text("\n".join(lines))
    config = RunConfig(
        job_id=55,
        request=JobRequest(
            strategy="fedavg",
            model=MLP,
            data=DataRequest(
                "local",
                "mine",
                path="clients/{client}.csv",
                data_root=str(tmp_path),
                validation_split=0.2,
            ),
            knobs={"clients": 2, "rounds": 6, "partition": "node_local", "local_epochs": 2},
        ),
        workers=(WorkerPlan(1, 0, 0.5, 0.5), WorkerPlan(2, 0, 0.5, 0.5)),
        storage_path=str(tmp_path / "storage"),
    )
    runner = JobRunner(config)
    run_fedavg(config, runner)
    metrics = [r.event for r in runner.events() if isinstance(r.event, MetricEvent)]
    clients = metrics[0].values["clients"]
    # Each client trained on its own file: its label counts cover only its five digits.
    assert [i for i, n in enumerate(clients["0"]["label_counts"]) if n] == [0, 1, 2, 3, 4]
    assert [i for i, n in enumerate(clients["1"]["label_counts"]) if n] == [5, 6, 7, 8, 9]
    assert clients["0"]["node_id"] == 1 and clients["1"]["node_id"] == 2
    rounds = [m.values for m in metrics[1:]]
    # Federated evaluation: both hosts' held-out examples (20% of each file) count.
    held_out = sum(round(0.2 * (c["examples"] / 0.8)) for c in clients.values())
    assert abs(rounds[-1]["validation_examples"] - held_out) <= 2
    assert rounds[-1]["validation_accuracy"] > rounds[0]["validation_accuracy"]
