"""Federated averaging's pure parts: aggregation, server optimizers, partitions, settings,
checkpoints, and the tasks a client trains (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.run import DataRequest, ModelRequest, WorkerPlan
from protocol.strategies.fedavg import parse_fedavg_settings
from ray_module.data.examples import digits, labelled_from_table, load_labelled, synthetic_t2t
from ray_module.errors import DataError, ModelError, SettingsError
from ray_module.strategies.fedavg.aggregate import (
    AggregationError,
    ClientUpdate,
    server_optimizer,
    weighted_average,
)
from ray_module.strategies.fedavg.checkpoint import (
    FederatedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from ray_module.strategies.fedavg.partition import (
    PartitionError,
    dirichlet_partition,
    iid_partition,
    split_validation,
)
from ray_module.strategies.fedavg.run import assign_clients
from ray_module.strategies.fedavg.server import check_round_fits, sample_size
from ray_module.strategies.fedavg.tasks import ClassifierTask, LocalTraining, TextToTextTask

DIGITS = digits()
CPU = torch.device("cpu")


# -- aggregation ----------------------------------------------------------------------------


def test_weighted_average_equals_the_hand_computed_result() -> None:
    a = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([10.0], np.float32)]
    b = [np.array([[5.0, 6.0], [7.0, 8.0]], np.float32), np.array([20.0], np.float32)]
    c = [np.array([[0.0, 0.0], [0.0, 1.0]], np.float32), np.array([-5.0], np.float32)]
    averaged = weighted_average([ClientUpdate(a, 10), ClientUpdate(b, 30), ClientUpdate(c, 60)])
    # (10*a + 30*b + 60*c) / 100, worked out by hand
    assert np.allclose(averaged[0], [[1.6, 2.0], [2.4, 3.4]])
    assert np.allclose(averaged[1], [4.0])
    assert averaged[0].dtype == np.float32


def test_a_client_with_more_examples_pulls_harder_and_one_client_is_returned_as_is() -> None:
    one = [np.array([2.0])]
    assert weighted_average([ClientUpdate(one, 7)])[0] == pytest.approx(2.0)
    skewed = weighted_average([ClientUpdate([np.array([0.0])], 1), ClientUpdate(one, 3)])
    assert skewed[0] == pytest.approx(1.5)


def test_integer_arrays_are_taken_from_the_largest_client_not_averaged() -> None:
    small = [np.array([1.0]), np.array([3], np.int64)]
    large = [np.array([3.0]), np.array([8], np.int64)]
    averaged = weighted_average([ClientUpdate(small, 1), ClientUpdate(large, 3)])
    assert averaged[1].tolist() == [8] and averaged[1].dtype == np.int64


def test_aggregation_refuses_empty_or_mismatched_updates() -> None:
    with pytest.raises(AggregationError, match="no client updates"):
        weighted_average([])
    with pytest.raises(AggregationError, match="shapes"):
        weighted_average([ClientUpdate([np.zeros(2)], 1), ClientUpdate([np.zeros(3)], 1)])
    with pytest.raises(AggregationError, match="no examples"):
        weighted_average([ClientUpdate([np.zeros(2)], 0)])


def test_fedavg_takes_the_average_and_fedavgm_adds_server_momentum() -> None:
    w0 = [np.array([1.0, 1.0])]
    average = [np.array([2.0, 0.0])]  # delta = (+1, -1)
    assert server_optimizer("fedavg", 1.0, 0.9).step(w0, average)[0].tolist() == [2.0, 0.0]

    momentum = server_optimizer("fedavgm", 1.0, 0.5)
    w1 = momentum.step(w0, average)  # v = delta; w = w0 + v
    assert w1[0].tolist() == [2.0, 0.0]
    w2 = momentum.step(w1, [np.array([3.0, -1.0])])  # delta = (1, -1); v = 0.5 v + delta
    assert w2[0].tolist() == pytest.approx([3.5, -1.5])

    slow = server_optimizer("fedavg", 0.5, 0.0)
    assert slow.step(w0, average)[0].tolist() == [1.5, 0.5]
    with pytest.raises(AggregationError, match="server_optimizer"):
        server_optimizer("fedadam", 1.0, 0.0)


# -- partitions -------------------------------------------------------------------------------


def test_validation_split_and_iid_shards_cover_the_data_once() -> None:
    train, validation = split_validation(100, 0.2, seed=3)
    assert len(validation) == 20 and len(train) == 80
    assert set(train).isdisjoint(validation)
    shards = iid_partition(train, 3, seed=3)
    assert sorted(len(s) for s in shards) == [26, 27, 27]
    assert sorted(np.concatenate(shards).tolist()) == sorted(train.tolist())
    again = iid_partition(train, 3, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(shards, again, strict=True))


def test_dirichlet_partition_skews_labels_and_large_alpha_approaches_iid() -> None:
    data = digits()
    indices = np.arange(len(data))

    def dominant_share(alpha: float) -> float:
        shards = dirichlet_partition(indices, data.labels, 5, alpha, seed=0)
        assert sorted(np.concatenate(shards).tolist()) == indices.tolist()
        shares = []
        for shard in shards:
            counts = np.bincount(data.labels[shard], minlength=10)
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    # 10 balanced classes: an IID shard's largest class is about 10% of it.
    assert dominant_share(0.05) > 0.5
    assert dominant_share(1000.0) < 0.15


def test_partitions_refuse_what_cannot_be_done() -> None:
    with pytest.raises(PartitionError, match="cannot be shared by 5 clients"):
        iid_partition(np.arange(3), 5, seed=0)
    with pytest.raises(PartitionError, match="dirichlet_alpha must be positive"):
        dirichlet_partition(np.arange(10), np.zeros(10, np.int64), 2, 0.0, seed=0)


def hosts(*streaks: int) -> list[WorkerPlan]:
    return [WorkerPlan(n + 1, 0, 1, 1, valid_streak=streak) for n, streak in enumerate(streaks)]


def test_clients_are_dealt_to_hosts_round_robin_and_samples_honour_the_minimum() -> None:
    assert assign_clients(5, hosts(0, 0)) == [(0, 2, 4), (1, 3)]
    assert assign_clients(2, hosts(0, 0, 0, 0)) == [(0,), (1,)]
    # A host on probation serves a quarter of a trusted host's clients, at least one.
    assert assign_clients(10, hosts(0, 100)) == [(0, 2, 4), (1, 3, 5, 6, 7, 8, 9)]
    assert assign_clients(3, hosts(100, 0, 100)) == [(0,), (1,), (2,)]
    assert sample_size(10, 0.3, 2) == 3
    assert sample_size(10, 0.1, 2) == 2
    assert sample_size(1, 1.0, 2) == 1


# -- settings ---------------------------------------------------------------------------------


def test_fedavg_settings_defaults_and_minimums() -> None:
    settings = parse_fedavg_settings({"clients": 4, "strategy": "fedavg"})
    assert settings.rounds == 10 and settings.fit_minimum == 2
    assert settings.available_minimum == 2


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"rounds": 0}, "rounds must be an integer"),
        ({"fraction_fit": 1.5}, "fraction_fit"),
        ({"partition": "shards"}, "partition must be one of"),
        ({"server_optimizer": "fedyogi"}, "server_optimizer"),
        ({"clients": 2, "min_fit_clients": 3}, "exceeds clients"),
        ({"clients": 4, "min_fit_clients": 3, "min_available_clients": 2}, "at least"),
        ({"epochs": 3}, "local_epochs"),
        ({"colour": "blue"}, "unknown fedavg setting 'colour'"),
        ({"round_timeout_s": True}, "round_timeout_s must be a number"),
        ({"dirichlet_alpha": 0}, "dirichlet_alpha"),
    ],
)
def test_bad_fedavg_settings_name_the_field(training: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fedavg_settings(training)


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trips_weights_and_momentum(tmp_path: Path) -> None:
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], np.float32)]
    velocity = [np.ones((2, 3)), np.zeros(1)]
    save_checkpoint(tmp_path / "ckpt", FederatedCheckpoint(7, weights, velocity))
    save_checkpoint(tmp_path / "ckpt", FederatedCheckpoint(8, weights, None))  # replaces it
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded is not None and loaded.round == 8 and loaded.velocity is None
    assert all(np.array_equal(a, b) for a, b in zip(weights, loaded.weights, strict=True))
    assert load_checkpoint(tmp_path / "missing") is None


# -- data -------------------------------------------------------------------------------------


def test_digits_are_offline_images_and_synthetic_t2t_is_deterministic_and_correct() -> None:
    data = load_labelled(DataRequest("builtin", "digits", max_samples=100))
    assert data.features.shape == (100, 1, 8, 8) and data.num_classes == 10
    assert data.features.min() >= 0.0 and data.features.max() <= 1.0
    pairs = synthetic_t2t(30)
    assert pairs == synthetic_t2t(30)
    for source, target, kind in zip(pairs.inputs, pairs.targets, pairs.kinds, strict=True):
        body = source.split(": ", 1)[1]
        if kind == "reverse":
            assert target == body[::-1]
        elif kind == "sort":
            assert target.split() == sorted(body.split())
        else:
            a, b = body.split(" + ")
            assert int(target) == int(a) + int(b)


def test_tabular_tables_and_local_csv_become_features_and_labels(tmp_path: Path) -> None:
    import datasets

    table = datasets.Dataset.from_dict(
        {"x": [0.0, 1.0, 2.0, 3.0], "y": [1, 1, 0, 0], "species": ["b", "a", "b", "c"]}
    )
    data = labelled_from_table(table, "species")
    assert data.features.tolist() == [[0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [3.0, 0.0]]
    assert data.labels.tolist() == [1, 0, 1, 2] and data.class_names == ("a", "b", "c")

    (tmp_path / "rows.csv").write_text("a,b,label\n1,2,10\n3,4,2\n5,6,10\n")
    local = load_labelled(DataRequest("local", "rows", path="rows.csv", data_root=str(tmp_path)))
    assert local.features.shape == (3, 2) and local.labels.tolist() == [10, 2, 10]
    (tmp_path / "bad.csv").write_text("a,label\nx,1\n")
    with pytest.raises(DataError, match="must be a number"):
        load_labelled(DataRequest("local", "bad", path="bad.csv", data_root=str(tmp_path)))
    with pytest.raises(DataError, match="no label column 'target'"):
        load_labelled(
            DataRequest("local", "rows", path="rows.csv", data_root=str(tmp_path)), "target"
        )
    with pytest.raises(DataError, match="not labelled data"):
        load_labelled(DataRequest("builtin", "stdlib-text"))


# -- tasks ------------------------------------------------------------------------------------


def local(epochs: int = 1, lr: float = 0.1, mu: float = 0.0, optimizer: str = "sgd"):
    return LocalTraining(epochs, 32, lr, optimizer, mu, shuffle_seed=1)


def test_classifier_training_lowers_the_loss_and_weights_round_trip() -> None:
    task = ClassifierTask(
        ModelRequest("classifier", "cnn"), DIGITS, hidden_size=None,
        seed=0, device=CPU,
    )  # fmt: skip
    indices = np.arange(600)
    before = task.evaluate(np.arange(1500, 1797))
    initial = task.get_weights()
    result = task.train(indices, local(epochs=3))
    after = task.evaluate(np.arange(1500, 1797))
    assert after["validation_loss"] < before["validation_loss"]
    assert result.num_examples == 600
    task.set_weights(initial)
    assert task.evaluate(np.arange(1500, 1797)) == pytest.approx(before)


def test_fedprox_keeps_the_local_model_closer_to_the_global_one() -> None:
    def drift(mu: float) -> float:
        task = ClassifierTask(
            ModelRequest("classifier", "mlp"), DIGITS, hidden_size=32,
            seed=0, device=CPU,
        )  # fmt: skip
        start = task.get_weights()
        trained = task.train(np.arange(400), local(epochs=5, lr=0.2, mu=mu)).weights
        return sum(float(((a - b) ** 2).sum()) for a, b in zip(start, trained, strict=True))

    assert drift(2.0) < 0.5 * drift(0.0)


def test_the_same_seed_builds_the_same_model_on_every_host() -> None:
    def weights() -> list[np.ndarray]:
        return ClassifierTask(
            ModelRequest("classifier", "mlp"), DIGITS, hidden_size=None,
            seed=5, device=CPU,
        ).get_weights()  # fmt: skip

    assert all(np.array_equal(a, b) for a, b in zip(weights(), weights(), strict=True))


def test_classifier_models_refuse_what_does_not_fit(tmp_path: Path) -> None:
    tabular = tmp_path / "rows.csv"
    tabular.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    rows = load_labelled(DataRequest("local", "rows", path="rows.csv", data_root=str(tmp_path)))
    with pytest.raises(ModelError, match="'cnn' needs image inputs"):
        ClassifierTask(
            ModelRequest("classifier", "cnn"), rows, hidden_size=None, seed=0, device=CPU,
        )  # fmt: skip
    with pytest.raises(ModelError, match="neither a preset"):
        ClassifierTask(
            ModelRequest("classifier", "resnet-9000"), DIGITS, hidden_size=None,
            seed=0, device=CPU,
        )  # fmt: skip


def test_a_saved_classifier_can_be_trained_further(tmp_path: Path) -> None:
    task = ClassifierTask(
        ModelRequest("classifier", "mlp"), DIGITS, hidden_size=None,
        seed=0, device=CPU,
    )  # fmt: skip
    task.train(np.arange(500), local(epochs=2))
    expected = task.evaluate(np.arange(1500, 1797))
    task.save(tmp_path / "saved")
    assert not list((tmp_path / "saved").glob("*.pkl")) and not list(
        (tmp_path / "saved").glob("*.bin")
    )
    again = ClassifierTask(
        ModelRequest("classifier", str(tmp_path / "saved")), DIGITS, hidden_size=None,
        seed=1, device=CPU,
    )  # fmt: skip
    assert again.evaluate(np.arange(1500, 1797)) == pytest.approx(expected)


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-bart"])
def test_text_to_text_presets_train_offline_and_generate(preset: str, tmp_path: Path) -> None:
    task = TextToTextTask(
        ModelRequest("text_to_text", preset),
        synthetic_t2t(300),
        max_source_length=32, max_target_length=16,
        num_beams=2, eval_samples=8, seed=0, device=CPU,
    )  # fmt: skip
    held_out = np.arange(250, 300)
    before = task.evaluate(held_out)
    task.train(np.arange(250), local(epochs=2, lr=3e-3, optimizer="adamw"))
    after = task.evaluate(held_out)
    assert after["validation_loss"] < before["validation_loss"]
    assert 0.0 <= after["validation_exact_match"] <= 1.0
    assert len(after["samples"]) == 3 and set(after["samples"][0]) == {
        "input",
        "target",
        "prediction",
    }
    task.save(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "tokenizer.json").is_file()


def test_text_to_text_hub_ids_fail_cleanly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ray_module.models.text_to_text import load_text_to_text

    with pytest.raises(ModelError, match="could not load 'no-such-org/no-such-t5'"):
        load_text_to_text(ModelRequest("text_to_text", "no-such-org/no-such-t5"))


def test_image_datasets_become_grayscale_pixels_in_one_channel() -> None:
    import datasets
    from PIL import Image

    images = [Image.new("RGB", (6, 5), color=(c, c, c)) for c in (0, 255, 51)]
    table = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2]}).cast_column(
        "image", datasets.Image()
    )
    data = labelled_from_table(table, "label")
    assert data.features.shape == (3, 1, 5, 6) and data.num_classes == 3
    assert data.features[1].max() == pytest.approx(1.0)
    assert data.features[2].mean() == pytest.approx(0.2)


def test_builtin_digits_are_exactly_scikit_learns() -> None:
    from sklearn.datasets import load_digits

    reference = load_digits()
    data = digits()
    assert np.array_equal(data.features.reshape(len(data), 64) * 16.0, reference.data)
    assert np.array_equal(data.labels, reference.target)


def test_plain_sgd_matches_torch_sgd() -> None:
    from ray_module.strategies.fedavg.tasks import PlainSGD

    def trained(make_optimizer) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        optimizer = make_optimizer(list(model.parameters()))
        for step in range(3):
            optimizer.zero_grad()
            model(torch.full((2, 5), float(step))).pow(2).sum().backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    ours = trained(lambda params: PlainSGD(params, 0.05))
    reference = trained(lambda params: torch.optim.SGD(params, lr=0.05))
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))


def test_node_local_files_merge_onto_the_federations_classes() -> None:
    from ray_module.data.examples import LabelledData
    from ray_module.strategies.fedavg.client import class_order, merge_client_examples

    def part(labels: list[str]) -> LabelledData:
        names = tuple(sorted(set(labels)))
        return LabelledData(
            np.arange(len(labels) * 2, dtype=np.float32).reshape(-1, 2),
            np.asarray([names.index(label) for label in labels]),
            len(names),
            names,
        )

    classes = sorted({"10", "2", "cat", "1"}, key=class_order)
    assert classes == ["1", "2", "10", "cat"]
    parts = {3: part(["2", "10", "10", "2", "10"]), 1: part(["1", "cat", "1", "1"])}
    merged, shards, validation = merge_client_examples(parts, classes, 0.25, seed=0)
    assert len(merged) == 9 and merged.class_names == tuple(classes)
    # Client 1's examples come first (clients in order), then client 3's.
    assert [classes[i] for i in merged.labels] == ["1", "cat", "1", "1", "2", "10", "10", "2", "10"]
    assert len(shards[1]) == 3 and len(shards[3]) == 4 and len(validation) == 2
    assert set(shards[1]) <= {0, 1, 2, 3} and set(shards[3]) <= {4, 5, 6, 7, 8}
    everything = np.concatenate([shards[1], shards[3], validation])
    assert sorted(everything.tolist()) == list(range(9))


def test_a_crash_while_replacing_a_checkpoint_leaves_the_previous_one_readable(
    tmp_path: Path,
) -> None:
    from ray_module.storage.directories import readable, replace_directory, staging_for

    weights = [np.ones(3, np.float32)]
    target = tmp_path / "checkpoint"
    save_checkpoint(target, FederatedCheckpoint(4, weights, None))
    # The swap moves the old copy aside first; a crash right after that leaves only ".old".
    target.rename(tmp_path / "checkpoint.old")
    loaded = load_checkpoint(target)
    assert loaded is not None and loaded.round == 4
    assert readable(target) == tmp_path / "checkpoint.old"
    staging = staging_for(target)
    (staging / "marker").write_text("new")
    replace_directory(staging, target)
    assert (target / "marker").read_text() == "new"
    assert not (tmp_path / "checkpoint.old").exists() and not staging.exists()


def test_a_round_whose_answers_the_memory_cannot_hold_is_refused_before_it_starts() -> None:
    """Issue 24 (6): every sampled client's weights sit on the server until averaged."""
    weights = [np.zeros((1024, 1024), dtype=np.float32)]  # 4 MB
    many = parse_fedavg_settings({"clients": 1000})  # every client, every round: 4 GB
    with pytest.raises(SettingsError, match=r"1000 clients' weights of 4 MB each \(3.91 GB\)"):
        check_round_fits(many, weights, memory_gb=2.0)
    check_round_fits(many, weights, memory_gb=4.0)
    sampled = parse_fedavg_settings({"clients": 1000, "fraction_fit": 0.1, "min_fit_clients": 50})
    check_round_fits(sampled, weights, memory_gb=0.5)
