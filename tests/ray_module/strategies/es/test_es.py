"""Evolution strategies' pure parts: the shared noise table, rank shaping, the antithetic
estimator, optimizers, settings, checkpoints, and the char-RNN model (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.run import ModelRequest
from protocol.strategies.es import parse_es_settings
from ray_module.errors import ModelError
from ray_module.models.char_rnn import (
    CharRNNConfig,
    beam_search,
    build_char_rnn,
    decode,
    encode,
    flat_parameters,
    load_char_rnn,
    resolve_char_rnn,
    sample_text,
    save_char_rnn,
    set_flat_parameters,
    vocabulary_of,
)
from ray_module.strategies.es.estimator import SGD, Adam, antithetic_gradient, centered_ranks
from ray_module.strategies.es.noise import PAIRS_PER_SLOT, NoiseTable, pair_index
from ray_module.strategies.es.run import load_es_checkpoint, restore_optimizer, save_es_checkpoint
from ray_module.strategies.es.server import (
    Worker,
    as_dealt,
    first_indices,
    in_pair_order,
    payload_bytes,
    split_population,
)

# -- noise ------------------------------------------------------------------------------------


def test_two_workers_given_the_same_seed_and_index_build_the_same_perturbation() -> None:
    # Two tables built independently, as two workers on two machines would.
    worker_a, worker_b = NoiseTable.create(7, 5000), NoiseTable.create(7, 5000)
    for index in (0, 1, pair_index(12, 3, 40)):
        assert np.array_equal(worker_a.perturbation(index), worker_b.perturbation(index))
    assert worker_a.digest() == worker_b.digest()
    assert not np.array_equal(worker_a.perturbation(1), worker_a.perturbation(2))
    assert NoiseTable.create(8, 5000).digest() != worker_a.digest()
    slice_ = worker_a.perturbation(3)
    assert slice_.shape == (5000,) and abs(float(slice_.std()) - 1.0) < 0.1


def test_pair_indices_never_collide_across_steps_workers_and_pairs() -> None:
    indices = {pair_index(s, w, k) for s in range(1, 20) for w in range(8) for k in range(50)}
    assert len(indices) == 19 * 8 * 50


# -- shaping and the estimator ----------------------------------------------------------------


def test_centered_ranks_match_hand_computed_values() -> None:
    assert centered_ranks(np.array([3.0, 1.0, 2.0])).tolist() == [0.5, -0.5, 0.0]
    assert centered_ranks(np.array([10.0, -4.0, 7.0, 0.0, 100.0])).tolist() == pytest.approx(
        [0.25, -0.5, 0.0, -0.25, 0.5]
    )
    assert centered_ranks(np.array([5.0])).tolist() == [0.0]
    # Ties share their average rank, so a flat loss gives every pair weight zero.
    assert centered_ranks(np.array([1.0, 1.0, 2.0])).tolist() == [-0.25, -0.25, 0.5]
    flat = antithetic_gradient(
        np.ones(3), np.ones(3), lambda i: np.ones(2), [0, 1, 2], sigma=0.1, num_params=2
    )
    assert flat.tolist() == [0.0, 0.0]


def test_antithetic_estimator_matches_the_hand_computed_sum() -> None:
    eps = {0: np.array([1.0, 0.0]), 1: np.array([0.0, 2.0])}
    plus, minus = np.array([4.0, 1.0]), np.array([2.0, 3.0])
    # ranks of [4, 1, 2, 3] centered: [0.5, -0.5, -1/6, 1/6]
    # weights: pair 0: 0.5 - (-1/6) = 2/3; pair 1: -0.5 - 1/6 = -2/3
    # g = (2/3 * [1, 0] + -2/3 * [0, 2]) / (2 * n * sigma), n = 2 pairs, sigma = 0.1
    expected = (np.array([2 / 3, 0.0]) + np.array([0.0, -4 / 3])) / 0.4
    gradient = antithetic_gradient(plus, minus, eps.__getitem__, [0, 1], 0.1, 2)
    assert gradient == pytest.approx(expected)


def test_on_a_toy_quadratic_the_es_estimate_points_along_the_true_gradient() -> None:
    rng = np.random.default_rng(1)
    theta, target = rng.standard_normal(20), rng.standard_normal(20)

    def loss(x: np.ndarray) -> float:
        return float(((x - target) ** 2).sum())

    noise, sigma, indices = NoiseTable.create(3, 20), 0.05, list(range(500))
    plus = np.array([loss(theta + sigma * noise.perturbation(i)) for i in indices])
    minus = np.array([loss(theta - sigma * noise.perturbation(i)) for i in indices])
    estimate = antithetic_gradient(plus, minus, noise.perturbation, indices, sigma, 20)
    true = 2 * (theta - target)
    cosine = estimate @ true / (np.linalg.norm(estimate) * np.linalg.norm(true))
    assert cosine > 0.95


def test_adam_and_sgd_steps_match_their_definitions() -> None:
    theta = np.array([1.0, -2.0], dtype=np.float32)
    gradient = np.array([0.5, -4.0])
    adam = Adam(learning_rate=0.1)
    # After one step m_hat = g and v_hat = g^2, so the step is lr * sign(g) (up to epsilon).
    assert adam.step(theta, gradient) == pytest.approx([0.9, -1.9], abs=1e-6)
    sgd = SGD(learning_rate=0.1, momentum=0.5)
    first = sgd.step(theta, gradient)
    assert first == pytest.approx([0.95, -1.6])
    assert sgd.step(first, gradient) == pytest.approx([0.95 - 0.075, -1.6 + 0.6])


def test_population_is_split_evenly_and_worker_payloads_are_scalars() -> None:
    def workers(*streaks: int) -> list[Worker]:
        return [Worker(None, n + 1, 0, 1.0, 1.0, rank=n, valid_streak=streak)
                for n, streak in enumerate(streaks)]  # fmt: skip

    assert split_population(10, workers(0, 0, 0)) == [4, 3, 3]
    assert split_population(2, workers(0, 0, 0, 0)) == [1, 1, 0, 0]
    # A node on probation evaluates a quarter of a trusted node's pairs (at least one), and
    # a full share once its results have held within the job.
    mixed = workers(0, 100)
    assert split_population(16, mixed) == [4, 12]
    for _ in range(6):  # rates fall after 5 valid results in a row
        mixed[0].count_result(True)
    assert split_population(16, mixed) == [8, 8]
    answer = {"indices": np.arange(8, dtype=np.int64), "losses": np.zeros((8, 2), np.float32)}
    assert payload_bytes(answer) == 8 * 8 + 8 * 2 * 4 + 16


def test_a_step_is_dealt_by_measured_speed_in_contiguous_runs_of_its_pairs() -> None:
    trusted = {"valid_streak": 100}
    fast, slow, new = (Worker(None, n, 0, 1.0, 1.0, rank=n, **trusted) for n in (1, 2, 3))
    fast.measured(pairs=30, seconds=0.1)  # 300 pairs/s
    slow.measured(pairs=10, seconds=0.1)  # 100 pairs/s
    assert split_population(40, [fast, slow]) == [30, 10]
    # One not measured yet counts as the mean of the others; probation still takes a quarter.
    assert split_population(40, [fast, slow, new]) == [20, 7, 13]
    slow.valid_streak = 0
    assert split_population(40, [fast, slow]) == [36, 4]
    # One slow step moves a worker's speed halfway, not all the way.
    fast.measured(pairs=30, seconds=0.3)
    assert fast.pairs_per_s == pytest.approx(200)
    # Contiguous runs of the step's pairs; a time budget numbers each worker's own.
    assert first_indices(3, [30, 10], [fast, slow]) == [pair_index(3, 0, 0), pair_index(3, 0, 30)]
    assert first_indices(3, [None, None], [fast, slow]) == [
        pair_index(3, 1, 0),
        pair_index(3, 2, 0),
    ]


def test_an_answer_counts_only_with_the_pairs_it_was_dealt() -> None:
    def answer(indices: list[int]) -> dict:
        return {"indices": np.asarray(indices), "losses": np.zeros((len(indices), 2))}

    assert as_dealt(answer([5, 6, 7]), 5, 3, budget=False)
    assert not as_dealt(answer([2, 3, 4]), 5, 3, budget=False)  # another worker's pairs
    assert not as_dealt(answer([5, 5, 6]), 5, 3, budget=False)  # one pair counted twice
    assert not as_dealt(answer([5, 6]), 5, 3, budget=False)
    assert not as_dealt({"indices": np.arange(5, 8), "losses": np.zeros((2, 2))}, 5, 3,
                        budget=False)  # fmt: skip
    assert not as_dealt({"indices": [5, 6, 7]}, 5, 3, budget=False)  # no losses at all
    assert not as_dealt("not an answer", 5, 3, budget=False)
    # Under a time budget: as many as it managed, from its first on, within its share.
    assert as_dealt(answer([5, 6, 7, 8]), 5, None, budget=True)
    assert as_dealt(answer([5, 6]), 5, 3, budget=True)  # a population and a budget: cut short
    assert not as_dealt(answer([5, 6, 7, 8]), 5, 3, budget=True)  # more than it was dealt
    assert not as_dealt(answer([]), 5, None, budget=True)
    assert not as_dealt(answer(list(range(5, 5 + PAIRS_PER_SLOT + 1))), 5, None, budget=True)


def test_the_update_sums_the_pairs_in_their_order_whatever_order_the_answers_came_in() -> None:
    def answer(first: int, count: int) -> dict:
        indices = np.arange(first, first + count)
        losses = np.stack([indices, -indices], axis=1) * 0.5
        return {"indices": indices, "losses": losses, "center_loss": float(first)}

    dealt = [answer(0, 3), answer(3, 1), answer(4, 2)]
    in_order = in_pair_order(dealt)
    assert in_order[0] == [0, 1, 2, 3, 4, 5]
    assert in_order[1][:, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    reversed_ = in_pair_order(dealt[::-1])
    assert reversed_[0] == in_order[0] and np.array_equal(reversed_[1], in_order[1])
    assert in_order[2] == reversed_[2] == 0.0  # the center loss of the first pairs' answer


# -- settings ---------------------------------------------------------------------------------


def test_es_settings_defaults_and_time_budget_mode() -> None:
    assert parse_es_settings({}).population == 64
    budget = parse_es_settings({"time_per_step_s": 0.5})
    assert budget.population is None and budget.time_per_step_s == 0.5


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"steps": 0}, "steps must be an integer"),
        ({"sigma": 0}, "sigma must be > 0"),
        ({"optimizer": "lion"}, "optimizer must be one of"),
        ({"beta1": 1.0}, "beta1"),
        ({"epochs": 2}, "use steps"),
        ({"noise": "big"}, "unknown es setting 'noise'"),
        ({"weight_decay": -1}, "weight_decay"),
    ],
)
def test_bad_es_settings_name_the_field(training: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_es_settings(training)


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_restores_weights_and_adam_state(tmp_path: Path) -> None:
    adam = Adam(learning_rate=0.1)
    theta = adam.step(np.ones(4, np.float32), np.arange(4.0))
    save_es_checkpoint(tmp_path / "ckpt", 5, theta, adam)
    loaded = load_es_checkpoint(tmp_path / "ckpt")
    assert loaded is not None and loaded.step == 5
    again = Adam(learning_rate=0.1)
    restore_optimizer(again, loaded)
    assert again.t == 1 and np.array_equal(again.m, adam.m) and np.array_equal(again.v, adam.v)
    gradient = np.array([1.0, -1.0, 2.0, 0.5])
    assert np.array_equal(again.step(loaded.theta, gradient), adam.step(theta, gradient))
    assert load_es_checkpoint(tmp_path / "none") is None


# -- the char-RNN -----------------------------------------------------------------------------


def tiny_rnn(hidden: int = 8, layers: int = 2) -> torch.nn.Module:
    vocabulary = vocabulary_of(["hello world", "help the world"])
    return build_char_rnn(CharRNNConfig(vocabulary, hidden, layers), seed=0)


def test_vocabulary_encodes_losslessly_and_unknown_characters_map_to_token_zero() -> None:
    vocabulary = vocabulary_of(["banana", "bandana"])
    assert vocabulary == vocabulary_of(["banana", "bandana"])
    assert set(vocabulary[1:]) == set("band")
    assert decode(encode("band", vocabulary), vocabulary) == "band"
    assert encode("bz", vocabulary).tolist()[1] == 0


def test_flat_parameters_round_trip_and_change_the_model() -> None:
    model = tiny_rnn()
    theta = flat_parameters(model)
    ids = torch.from_numpy(encode("hello world", model.config.vocabulary))[None, :]
    with torch.no_grad():
        before = float(model.loss(ids))
        set_flat_parameters(model, theta + 0.5)
        assert float(model.loss(ids)) != before
        set_flat_parameters(model, theta)
        assert float(model.loss(ids)) == pytest.approx(before)


def test_sampling_and_beam_search_generate_text_from_the_vocabulary() -> None:
    model = tiny_rnn()
    sampled = sample_text(model, "he", 30, seed=3)
    assert len(sampled) == 30 and set(sampled) <= set(model.config.vocabulary)
    assert sampled == sample_text(model, "he", 30, seed=3)
    beam = beam_search(model, "he", 12, beams=3)
    assert len(beam) == 12 and set(beam) <= set(model.config.vocabulary)
    # One beam is greedy decoding.
    ids = torch.from_numpy(encode("he", model.config.vocabulary))[None, :]
    greedy = []
    with torch.no_grad():
        logits, hidden = model(ids)
        for _ in range(12):
            token = int(logits[0, -1].argmax())
            greedy.append(token)
            logits, hidden = model(torch.tensor([[token]]), hidden)
    assert beam_search(model, "he", 12, beams=1) == decode(greedy, model.config.vocabulary)


def test_a_saved_char_rnn_reloads_and_can_be_named_as_the_model(tmp_path: Path) -> None:
    model = tiny_rnn(hidden=6, layers=1)
    save_char_rnn(model, tmp_path / "saved")
    again = load_char_rnn(tmp_path / "saved")
    assert np.array_equal(flat_parameters(again), flat_parameters(model))
    resolved = resolve_char_rnn(
        ModelRequest("char_rnn", str(tmp_path / "saved")), "ignored", hidden_size=None,
        num_layers=None,
    )  # fmt: skip
    assert resolved.config == model.config
    with pytest.raises(ModelError, match="neither the 'rnn' preset"):
        resolve_char_rnn(ModelRequest("char_rnn", "gru"), "ab", hidden_size=None, num_layers=None)
    with pytest.raises(ModelError, match="unknown model overrides"):
        resolve_char_rnn(
            ModelRequest("char_rnn", "rnn", overrides={"cells": 3}), "ab", hidden_size=None,
            num_layers=None,
        )  # fmt: skip
