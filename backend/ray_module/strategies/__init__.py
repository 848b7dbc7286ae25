"""Training strategies: a function ``run(config, runner)`` per ``training_config.strategy``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def get_strategy(name: str) -> Callable[[Any, Any], None]:
    if name == "data_parallel":
        from ray_module.strategies.data_parallel import run_data_parallel

        return run_data_parallel
    if name == "fedavg":
        from ray_module.strategies.fedavg import run_fedavg

        return run_fedavg
    if name == "es":
        from ray_module.strategies.es import run_es

        return run_es
    raise NotImplementedError(f"strategy '{name}' is not available on this cluster yet")
