"""Every benchmark script still imports against today's code: they are run by hand, so a
renamed or removed name (a ``RunConfig`` field, a constant) would otherwise go unnoticed until
someone measures. Running them is ``make``-free and slow; see benchmarks/README.md."""

from __future__ import annotations

import importlib

import pytest

from tests.paths import REPO_ROOT

SCRIPTS = sorted(path.stem for path in (REPO_ROOT / "benchmarks").glob("*.py"))
# Flower has a virtual environment of its own (benchmarks/flower_setup.sh).
NEEDS_ITS_OWN_VENV = {"flower_digits"}
# Baselines the scripts import and run beside our code, not scripts themselves.
HELPERS = {"torch_trainer_baseline", "scheduler_baseline", "submit_ceiling_app", "results"}


def test_the_list_of_scripts_is_what_is_there() -> None:
    assert {"jobs", "run_start", "split", "es", "gpu_check"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s not in NEEDS_ITS_OWN_VENV])
def test_a_benchmark_imports_and_has_its_entry_point(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    if name not in HELPERS:
        assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
