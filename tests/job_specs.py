"""Small real jobs for tests: a split MLP on digits that fits the launcher's one-CPU local
node (trainer and loader half a core each), for tests that drive the launcher (browser,
command line); a FedAvg job that takes two 2-core nodes, for tests of multi-node attempts."""

from __future__ import annotations


def small_split_job(
    epochs: int, delay_s: float = 0.0, *, max_samples: int = 300, **changes: object
) -> dict:
    return {
        "name": f"digits, {epochs} epochs",
        "model_config": {"type": "classifier", "model_name": "mlp"},
        "data_config": {"data_source": "builtin", "dataset_name": "digits",
                        "max_samples": max_samples},
        "training_config": {"strategy": "split", "epochs": epochs, "step_delay_s": delay_s,
                            "loader": {"cpu_cores": 0.5, "memory": 0.5}},
        "requirements": {"gpu": 0, "cpu_cores": 0.5, "memory": 0.5},
        "max_runtime_s": 600,
        **changes,
    }  # fmt: skip


TWO_NODE_JOB = {  # a whole node per client host
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
    "training_config": {"strategy": "fedavg", "rounds": 2, "clients": 2, "num_workers": 2},
    "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 2},
}
