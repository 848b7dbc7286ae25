"""Evolution strategies on Ray: workers agree on the noise, send only scalars whatever the
model size, survive a lost worker, resume from checkpoints, and a char-RNN learns through
the API."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from protocol.run import DataRequest, ModelRequest
from protocol.strategies.es import parse_es_settings
from ray_module.resources import node_resource
from ray_module.strategies.es.noise import NoiseTable
from ray_module.strategies.es.server import ESServer, Worker, make_optimizer, split_population
from ray_module.strategies.es.worker import ESWorker
from ray_module.strategies.es.worker_config import WorkerConfig
from tests.baselines import char_unigram
from tests.conftest import wait_until_finished
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RNN = ModelRequest("char_rnn", "rnn")
TEXT = DataRequest("builtin", "stdlib-text", max_samples=400)


def start_workers(
    training: dict, nodes: list[int], actor: Any = None
) -> tuple[list[Worker], list[dict[str, Any]]]:
    import ray

    settings = parse_es_settings(training)
    actor = actor or ray.remote(ESWorker)
    workers = []
    for rank, node_id in enumerate(nodes):
        config = WorkerConfig(0, rank, node_id, 0, 0.5, 0.5, RNN, TEXT, settings)
        handle = actor.options(num_cpus=0.5, resources={node_resource(node_id): 0.001}).remote(
            config
        )
        workers.append(Worker(handle, node_id, 0, 0.5, 0.5, rank=rank))
    infos = ray.get([w.handle.info.remote() for w in workers])
    return workers, infos


def server_for(workers: list[Worker], training: dict, num_params: int) -> ESServer:
    settings = parse_es_settings(training)
    noise = NoiseTable.create(settings.seed, num_params)
    return ESServer(workers, settings, noise, make_optimizer(settings))


def test_workers_on_two_nodes_build_the_same_noise_and_send_scalars_whatever_the_size(
    ray_cluster,
) -> None:
    import ray

    sent: dict[int, int] = {}
    for hidden in (16, 96):
        training = {"hidden_size": hidden, "population": 32, "seq_len": 32}
        workers, infos = start_workers(training, [1, 2])
        assert infos[0]["noise_digest"] == infos[1]["noise_digest"]
        num_params = infos[0]["num_params"]
        server = server_for(workers, training, num_params)
        theta = ray.get(workers[0].handle.initial_parameters.remote())
        result = server.run_step(1, theta)
        assert result.metrics["evaluations"] == 64 and result.metrics["workers_answered"] == 2
        assert result.metrics["num_params"] == num_params
        sent[num_params] = result.metrics["bytes_from_workers"]
        for worker in workers:
            ray.kill(worker.handle)
    small, large = sorted(sent)
    assert large > 10 * small  # two model sizes an order of magnitude apart...
    assert sent[small] == sent[large]  # ...and the workers sent exactly as many bytes
    assert sent[small] < 32 * 2 * 16 + 100  # scalars: an index and two losses per pair


def stalling_worker_class(stalled_rank: int, started_dir: Path) -> Any:
    """A real ES worker, but the one of rank ``stalled_rank`` leaves a file ``started`` in
    ``started_dir`` when it starts evaluating and then never answers: whenever it is killed,
    it dies mid-step (defined in a function so Ray ships the class by value)."""
    import ray

    class StallingESWorker(ESWorker):
        def evaluate(self, *args: Any) -> dict[str, Any]:
            if self.config.rank == stalled_rank:
                (started_dir / "started").touch()
                time.sleep(3600)
            return super().evaluate(*args)

    return ray.remote(StallingESWorker)


def test_a_worker_killed_mid_step_is_left_out_and_the_run_goes_on(
    ray_cluster, tmp_path: Path
) -> None:
    import ray

    training = {"time_per_step_s": 3.0, "step_timeout_s": 20, "seq_len": 32}
    actor = stalling_worker_class(1, tmp_path)
    workers, infos = start_workers(training, [1, 2, 1], actor)
    try:
        server = server_for(workers, training, infos[0]["num_params"])
        theta = ray.get(workers[0].handle.initial_parameters.remote())

        with ThreadPoolExecutor(max_workers=1) as pool:
            step_one = pool.submit(server.run_step, 1, theta)
            wait_for(
                lambda: (tmp_path / "started").exists() or step_one.done(),
                timeout_s=120,
                what="the worker of rank 1 to start step 1",
            )
            assert not step_one.done(), step_one.result()
            ray.kill(workers[1].handle)  # mid-step: it never answers by itself
            first = step_one.result(timeout=120)
        assert first.metrics["workers_answered"] == 2 and first.metrics["live_workers"] == 2
        assert {c.node_id for c in first.credits} == {1}  # the dead worker's node earns nothing
        second = server.run_step(2, first.theta)
        assert second.metrics["workers_answered"] == 2
        assert not np.array_equal(second.theta, theta)
    finally:
        for worker in workers:
            ray.kill(worker.handle)


def unequal_worker_class(slow_rank: int, lying_rank: int) -> Any:
    """A real ES worker, but the one of rank ``slow_rank`` takes 50 ms longer per pair (a
    slower machine), and the one of rank ``lying_rank`` claims the pairs dealt just before its
    own (another worker's) with its own losses."""
    import ray

    class UnequalESWorker(ESWorker):
        def evaluate(self, first_index: int, *args: Any) -> dict[str, Any]:
            answer = super().evaluate(first_index, *args)
            if self.config.rank == slow_rank:
                time.sleep(0.05 * len(answer["indices"]))
            if self.config.rank == lying_rank:
                answer["indices"] = answer["indices"] - len(answer["indices"])
            return answer

    return ray.remote(UnequalESWorker)


def test_a_step_gives_the_same_weights_however_it_is_dealt_and_a_slow_node_is_dealt_less(
    ray_cluster,
) -> None:
    import ray

    training = {"hidden_size": 16, "population": 32, "seq_len": 32}
    alone, infos = start_workers(training, [1])
    pair, _ = start_workers(training, [1, 2], unequal_worker_class(1, -1))
    try:
        one_worker = server_for(alone, training, infos[0]["num_params"])
        two_workers = server_for(pair, training, infos[0]["num_params"])
        theta = ray.get(alone[0].handle.initial_parameters.remote())
        steps = []
        for step in (1, 2, 3):
            by_one, by_two = one_worker.run_step(step, theta), two_workers.run_step(step, theta)
            # Every pair of the step, whoever evaluated it: the very same update.
            assert np.array_equal(by_one.theta, by_two.theta), step
            assert by_two.metrics["workers_answered"] == 2
            steps.append(by_two.metrics["step_seconds"])
            theta = by_one.theta
        # Dealt alike at first (16 pairs each: the slow node holds the step for 0.8 s), then
        # in proportion to the speeds the server saw: the slow node gets a few pairs only.
        assert split_population(32, pair)[1] <= 6, [w.pairs_per_s for w in pair]
        assert min(steps[1:]) < steps[0] * 0.6, steps  # timing: a margin for a busy machine
    finally:
        for worker in alone + pair:
            ray.kill(worker.handle)


def test_a_worker_that_claims_pairs_it_was_not_dealt_is_left_out_and_stopped(
    ray_cluster,
) -> None:
    import ray

    training = {"hidden_size": 16, "population": 16, "seq_len": 32}
    workers, infos = start_workers(training, [1, 2], unequal_worker_class(-1, 1))
    try:
        server = server_for(workers, training, infos[0]["num_params"])
        theta = ray.get(workers[0].handle.initial_parameters.remote())
        first = server.run_step(1, theta)
        assert first.metrics["workers_answered"] == 1 and first.metrics["evaluations"] == 16
        assert [c.node_id for c in first.credits] == [1]  # no pay for the claimed pairs
        assert [(v.node_id, v.valid) for v in first.verdicts] == [(2, False)]
        assert "other pairs than the ones it was dealt" in first.verdicts[0].detail
        second = server.run_step(2, first.theta)  # the rest of the job runs without it
        assert second.metrics["live_workers"] == 1 and second.metrics["evaluations"] == 32
    finally:
        for worker in workers:
            ray.kill(worker.handle)


def test_char_rnn_with_es_on_stdlib_text_learns_more_than_character_frequencies(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client = ray_client
    user = make_account("alice")
    corpus = {"data_source": "builtin", "dataset_name": "stdlib-text"}
    body = {
        "model_config": {"type": "char_rnn", "model_name": "rnn"},
        "data_config": corpus,
        "training_config": {"steps": 60, "population": 48},
        # Four cores: one evaluator per core by default, two on each node.
        "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 2},
        "max_runtime_s": 900,
    }
    job = client.post("/jobs/submit", headers=user.headers, json=body).json()
    assert job["strategy"] == "es"  # the default for char_rnn
    done = wait_until_finished(client, user.headers, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    series = client.get(f"/metrics/training/{job['id']}", headers=user.headers).json()["series"]
    steps = [p["values"] for p in series if p["step"] > 0]
    assert len(steps) == 60
    # Learning the characters' frequencies alone scores the unigram's 3.37 nats on the
    # held-out text (from about ln(100) = 4.6 untrained); 60 steps reach about 3.2.
    unigram = char_unigram(DataRequest(**corpus), validation_split=0.1)
    assert steps[0]["loss"] > unigram.train + 1.0
    validation = [s["validation_loss"] for s in steps if "validation_loss" in s]
    assert len(validation) == 6, validation  # every 10 steps
    assert validation[-1] < unigram.validation - 0.1, (validation, unigram)
    assert all(s["bytes_from_workers"] == steps[0]["bytes_from_workers"] for s in steps)
    assert {"evaluations_per_s", "live_workers", "validation_loss", "sample_text"} <= (
        steps[-1].keys()
    )
    assert steps[-1]["live_workers"] == 4
    assert sorted(done["usage"]) == ["1", "2"]
    # Honest nodes, new: their answers were replayed on the other node (every one at first,
    # then fewer as they held), and all held.
    owner, nodes = two_nodes
    for node in nodes:
        trust = client.get(f"/nodes/{node}", headers=owner.headers).json()["trust"]
        assert trust["results_invalid"] == 0 and trust["results_valid"] >= 20, trust
    assert sorted(part["node_id"] for part in done["earnings"]) == nodes
    archive = client.get(f"/jobs/{job['id']}/artifacts", headers=user.headers)
    assert archive.status_code == 200
