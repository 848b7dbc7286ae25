"""The modes' rules, as both sides check them: each mode's model types, settings, worker
counts and progress, and the submit-time refusals that follow from them (422, nothing
stored, nothing held)."""

from __future__ import annotations

import pytest

from protocol.errors import SettingsError
from protocol.run import DataRequest, JobRequest, ModelRequest, ResourceRequest
from protocol.strategies.registry import (
    RULES,
    default_rules,
    get_rules,
    trainable_model_types,
)


def submitted(
    model_type: str = "classifier",
    cpu: float = 2,
    gpu: int = 0,
    *,
    memory_gb: float = 2.0,
    num_workers: int | None = None,
    data_source: str = "builtin",
    data_path: str | None = None,
) -> JobRequest:
    """A submitted job as the rules see it (they do not read its strategy's name)."""
    return JobRequest(
        strategy="fedavg",
        model=ModelRequest(model_type, "mlp"),
        data=DataRequest(data_source, "digits", path=data_path),
        requirements=ResourceRequest(gpu=gpu, cpu_cores=cpu, memory_gb=memory_gb),
        num_workers=num_workers,
    )


def test_every_model_type_has_one_default_strategy_that_trains_it() -> None:
    for model_type in ("simple_transformer", "text_to_text", "classifier", "char_rnn"):
        strategy = default_rules(model_type)
        assert model_type in strategy.model_types
        defaults = [s for s in RULES.values() if model_type in s.default_for]
        assert defaults == [strategy]
    assert trainable_model_types() == {
        "simple_transformer",
        "text_to_text",
        "classifier",
        "char_rnn",
    }


def test_unknown_strategy_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(
        SettingsError, match=r"unknown strategy 'pipeline'.*data_parallel, es, fedavg, split"
    ):
        get_rules("pipeline")


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_strategy_refuses_unknown_knobs_naming_them(name: str) -> None:
    strategy = get_rules(name)
    with pytest.raises(SettingsError, match="'learning_rat'"):
        strategy.parse_settings({"learning_rat": 0.1})
    defaults = strategy.parse_settings({})
    assert strategy.parse_settings(defaults.to_dict()) == defaults  # defaults round-trip


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_strategy_refuses_out_of_range_values(name: str) -> None:
    with pytest.raises(SettingsError, match="batch_size"):
        get_rules(name).parse_settings({"batch_size": 0})


def test_worker_counts_follow_each_strategys_rule() -> None:
    fedavg, es, dp = get_rules("fedavg"), get_rules("es"), get_rules("data_parallel")
    clients4 = fedavg.parse_settings({"clients": 4})
    assert fedavg.worker_count(submitted(cpu=2), clients4) == 2  # 2 hosts, 2 clients each
    assert fedavg.worker_count(submitted(cpu=8), fedavg.parse_settings({"clients": 3})) == 3
    assert fedavg.worker_count(submitted(cpu=8, gpu=1), clients4) == 1
    assert fedavg.worker_count(submitted(cpu=2, num_workers=4), clients4) == 4
    es_settings = es.parse_settings({})
    assert es.worker_count(submitted("char_rnn", cpu=4), es_settings) == 4
    assert es.worker_count(submitted("char_rnn", cpu=0.5), es_settings) == 1
    assert dp.worker_count(submitted("simple_transformer", cpu=4), dp.parse_settings({})) == 1


def test_a_default_worker_count_is_as_many_processes_as_the_memory_holds() -> None:
    """Issue 24 (6): 64 cores and 1 GB were 64 processes of a third of a GB each."""
    fedavg, es = get_rules("fedavg"), get_rules("es")
    es_settings = es.parse_settings({})
    assert es.worker_count(submitted("char_rnn", cpu=64, memory_gb=1.0), es_settings) == 4
    assert es.worker_count(submitted("char_rnn", cpu=64, memory_gb=64.0), es_settings) == 64
    assert es.worker_count(submitted("char_rnn", cpu=4, memory_gb=0.25), es_settings) == 1
    clients = fedavg.parse_settings({"clients": 100})
    assert fedavg.worker_count(submitted(cpu=32, memory_gb=2.0), clients) == 8


def test_a_split_loader_runs_as_many_actors_as_its_memory_holds() -> None:
    split = get_rules("split")
    greedy = split.parse_settings({"loader": {"cpu_cores": 1024, "memory": 0.25}})
    assert greedy.loader.actors_per_node == 1  # not 1024 processes on a quarter GB
    assert (
        split.parse_settings({"loader": {"cpu_cores": 4, "memory": 4}}).loader.actors_per_node == 4
    )
    assert (
        split.parse_settings({"loader": {"cpu_cores": 4, "memory": 0.5}}).loader.actors_per_node
        == 2
    )
    with pytest.raises(SettingsError, match=r"loader: memory must be at least 0.25 GB"):
        split.parse_settings({"loader": {"cpu_cores": 1, "memory": 0.1}})


def test_progress_reads_in_each_strategys_unit() -> None:
    fedavg, es, dp = get_rules("fedavg"), get_rules("es"), get_rules("data_parallel")
    assert fedavg.progress(fedavg.parse_settings({"rounds": 10}), 4) == "round 4 of 10"
    assert es.progress(es.parse_settings({"steps": 60}), 30) == "step 30 of 60"
    assert dp.progress(dp.parse_settings({"max_steps": 8}), 3) == "step 3 of 8"
    assert dp.progress(dp.parse_settings({"epochs": 2}), 3) == "step 3"


def test_cross_field_rules_belong_to_the_strategy() -> None:
    fedavg = get_rules("fedavg")
    with pytest.raises(SettingsError, match="num_workers \\(3\\) exceeds clients \\(2\\)"):
        fedavg.check_job(submitted(num_workers=3), fedavg.parse_settings({"clients": 2}))
    node_local = fedavg.parse_settings({"partition": "node_local"})
    with pytest.raises(SettingsError, match="node_local"):
        fedavg.check_job(submitted(), node_local)
    fedavg.check_job(submitted(data_source="local", data_path="c/{client}.csv"), node_local)
    with pytest.raises(SettingsError, match="cannot train model type 'classifier'"):
        get_rules("data_parallel").check_model_type("classifier")
