"""The split pipeline's parts without a cluster: its knobs, the epoch plan, the stream's
bound and order, placement of the data stage, scores and result files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from compute.dispatch.placement import NodeCapacity, PendingJob, fit_job, plan
from protocol.placement import ExtraShare
from protocol.run import DataRequest
from protocol.strategies.split import parse_split_settings
from ray_module.data.examples import load_labelled
from ray_module.errors import DataError, SettingsError
from ray_module.models.classifier import ClassifierAdapter, ClassifierConfig
from ray_module.models.contract import Model, PredictOptions
from ray_module.models.scores import ClassifierScore
from ray_module.strategies.split.results import (
    InferenceSettings,
    ResultWriter,
    classifier_estimates,
)
from ray_module.strategies.split.samples import EpochPlan, part_ids, split_ids
from ray_module.strategies.split.stream import BatchStream, Flow
from ray_module.strategies.split.worker import SplitWorker


@pytest.mark.parametrize(
    ("knobs", "field", "words"),
    [
        ({"loader": {"cpu_cores": 0}}, "loader", "cpu_cores"),
        ({"loader": {"gpus": 1}}, "loader", "unknown"),
        ({"loader": 2}, "loader", "must be an object"),
        ({"prefetch_batches": 9, "max_in_flight_batches": 4}, "prefetch_batches", "exceed"),
        ({"shuffle": 1}, "shuffle", "true or false"),
        ({"rounds": 3}, None, "epochs or max_steps"),
        ({"max_in_flight_batches": 0}, "max_in_flight_batches", "from 1"),
    ],
)
def test_bad_knobs_are_refused_naming_the_field(knobs: dict, field: str | None, words: str) -> None:
    with pytest.raises(SettingsError, match=words) as caught:
        parse_split_settings(knobs)
    assert caught.value.field == field


def test_the_split_and_the_epochs_cover_every_sample_once() -> None:
    train, validation = split_ids(103, 0.2, seed=7)
    assert len(validation) == 21 and not set(train) & set(validation)
    assert sorted([*train, *validation]) == list(range(103))
    assert (split_ids(103, 0.2, seed=7)[1] == validation).all()  # the same for every reader
    assert (part_ids(103, "validation", 0.2, 7) == validation).all()
    epochs = EpochPlan(train, batch_size=10, shuffle=True, seed=7)
    orders = []
    for epoch in range(3):
        batches = [epochs.batch(epoch, b) for b in range(epochs.batches)]
        assert sorted(np.concatenate(batches)) == sorted(train)
        orders.append(np.concatenate(batches))
    assert not (orders[0] == orders[1]).all()  # shuffled anew each epoch, reproducibly
    assert (np.concatenate([epochs.batch(1, b) for b in range(epochs.batches)]) == orders[1]).all()


class FakeLoaders:
    """Batches made at once; counts what was asked and not yet consumed."""

    def __init__(self) -> None:
        self.asked = 0
        self.consumed = 0
        self.most = 0

    def ask(self, loader: int, key: int) -> dict:
        self.asked += 1
        self.most = max(self.most, self.asked - self.consumed)
        ids = np.arange(key * 4, key * 4 + 4)
        return {"ids": ids, "node_id": loader, "cpu_s": 0.01, "wall_s": 0.02, "nbytes": 100}

    def fetch(self, ref: dict) -> dict:
        time.sleep(0.001)  # fetched on the prefetch threads, out of the consumer's way
        return ref


def test_the_stream_keeps_its_bound_and_its_order_and_credits_each_loader() -> None:
    fake = FakeLoaders()
    flow = Flow(loader_cores=2)
    stream = BatchStream([1, 2], fake.ask, max_in_flight=3, prefetch=2, flow=flow, fetch=fake.fetch)
    seen = []
    for key, batch in stream(list(range(10))):
        assert list(batch["ids"]) == list(range(key * 4, key * 4 + 4))
        seen.append(key)
        fake.consumed += 1
    assert seen == list(range(10)) and fake.most == 3 and fake.asked == 10
    assert flow.max_in_flight == 3 and flow.samples == 40
    cpu, wall = flow.take_credit()
    assert cpu == pytest.approx({1: 0.05, 2: 0.05}) and wall == pytest.approx({1: 0.1, 2: 0.1})
    assert flow.take_credit() == ({}, {})  # credited once


def test_the_data_stage_goes_to_a_cpu_node_and_is_part_of_the_gang() -> None:
    gpu_box = NodeCapacity(1, gpu=1, cpu_cores=4, memory_gb=8)
    cpu_box = NodeCapacity(2, gpu=0, cpu_cores=2, memory_gb=4)
    job = PendingJob(7, gpu=1, cpu_cores=1, memory_gb=1, extra=(ExtraShare("loader", 0, 2, 1),))
    slots = fit_job(job, [gpu_box, cpu_box])
    assert [(s.role, s.node_id) for s in slots] == [("worker", 1), ("loader", 2)]
    # No node can hold the loaders: nothing of the job starts, and the reason says why.
    greedy = PendingJob(8, 1, 1, 1, extra=(ExtraShare("loader", 0, 16, 1),))
    waiting = plan([greedy], [gpu_box, cpu_box]).waiting[0]
    assert "loaders" in waiting.reason and "16 CPU cores" in waiting.reason


def test_classifier_scores_count_precision_recall_and_confusion() -> None:
    score = ClassifierScore(3, ("a", "b", "c"))
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    score.add(np.full(6, 0.5), predicted, labels)
    metrics = score.metrics()
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["loss"] == 0.5
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "support": 2}


def classifier_worker(settings: InferenceSettings) -> SplitWorker:
    """The split worker's predicting half, on the CPU, without Ray: only what it reads."""
    worker = SplitWorker.__new__(SplitWorker)
    worker.config = SimpleNamespace(inference=settings)
    worker.options = PredictOptions(top_k=settings.top_k)
    worker._label_map = None
    return worker


def test_results_are_written_as_they_come_in_both_formats(tmp_path: Path) -> None:
    settings = InferenceSettings(top_k=2, confidence_threshold=0.6)
    names = ["x", "y", "z"]
    writer = ResultWriter(tmp_path)
    probabilities = np.array([[0.7, 0.1, 0.2], [0.4, 0.35, 0.25], [0.05, 0.15, 0.8]])
    batch = {"ids": np.array([10, 11, 12]), "features": probabilities}
    # A "model" whose logits softmax back to these probabilities, so the worker's own
    # filter (confidence_threshold) and top-k decide what is written.
    model = Model(
        ClassifierAdapter(),
        torch.log,
        ClassifierConfig("mlp", (3,), 3, class_names=("x", "y", "z")),
    )
    rows = classifier_worker(settings)._predictions(model, batch)
    writer.write(rows, considered=len(batch["ids"]))
    summary = writer.close({})
    assert (summary["total_samples"], summary["kept"], summary["filtered_out"]) == (3, 2, 1)
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(row["id"], row["label"]) for row in lines] == [(10, "x"), (12, "z")]
    assert [[t["label"] for t in row["top_k"]] for row in lines] == [["x", "z"], ["z", "y"]]
    for row in lines:
        shown = [t["probability"] for t in row["top_k"]]
        assert shown == sorted(shown, reverse=True) and shown[0] == row["probability"]
    assert pq.read_table(tmp_path / "predictions.parquet").num_rows == 2
    assert summary["result_bytes"] == (tmp_path / "predictions.jsonl").stat().st_size
    sizes = classifier_estimates(1000, names * 10, settings)
    assert (
        sizes["estimated_memory_mb_predictions_only"]
        < sizes["estimated_memory_mb_top_k"]
        < sizes["estimated_memory_mb_full_probabilities"]
    )


def test_numpy_files_load_without_pickle(tmp_path: Path) -> None:
    np.savez(tmp_path / "good.npz", features=np.ones((5, 4)), labels=np.arange(5) % 2)
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object))
    request = DataRequest("local", "mine", path="good.npz", data_root=str(tmp_path))
    data = load_labelled(request)
    assert data.features.shape == (5, 4) and data.num_classes == 2
    evil = DataRequest("local", "mine", path="evil.npy", data_root=str(tmp_path))
    with pytest.raises(DataError, match=r"cannot read evil\.npy"):
        load_labelled(evil)
