"""A worker's compute threads: one per reserved core, capped by what its machine allows."""

from __future__ import annotations

import os

import pytest

from ray_module.threads import threads_for, use_cores


@pytest.fixture
def machine_cores() -> int:
    return len(os.sched_getaffinity(0))


def test_a_fractional_share_still_gets_one_thread(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_for(0.25) == 1


def test_threads_follow_reserved_cores_up_to_the_machines_cores(monkeypatch, machine_cores) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_for(machine_cores) == machine_cores
    assert threads_for(machine_cores + 7) == machine_cores


def test_an_operators_omp_cap_wins_over_reserved_cores(monkeypatch, machine_cores) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_for(machine_cores + 3) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")  # ignored, not a crash
    assert threads_for(1) == 1


def test_use_cores_sets_torchs_threads(monkeypatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert use_cores(4) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
