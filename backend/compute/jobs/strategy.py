"""A stored job as its strategy sees it: the job at submit, its strategy's own knobs, how
many workers it gives the requirements and the parts beside them (split's loaders). Read by
the scheduler, billing and the run config alike."""

from __future__ import annotations

import functools
import json

from compute.models import Job
from protocol.errors import SettingsError
from protocol.placement import ExtraShare
from protocol.strategies.registry import get_rules
from protocol.strategies.rules import StrategyRules, SubmittedJob


def submitted_job(job: Job) -> SubmittedJob:
    """A stored job as its strategy sees it at submit."""
    spec = job.spec or {}
    model = spec.get("model_config") or {}
    data = spec.get("data_config") or {}
    return SubmittedJob(
        model_type=str(model.get("type", "")),
        model_name=str(model.get("model_name", "")),
        data_source=str(data.get("data_source", "")),
        dataset_name=str(data.get("dataset_name", "")),
        data_path=data.get("path"),
        gpu=job.gpu,
        cpu_cores=job.cpu_cores,
        memory_gb=job.memory_gb,
        num_workers=(spec.get("training_config") or {}).get("num_workers"),
        task=str(spec.get("task") or "train"),
        data_split=data.get("split"),
    )


def strategy_knobs(job: Job) -> dict:
    """The strategy's own knobs of a stored job (as submitted)."""
    training = (job.spec or {}).get("training_config") or {}
    return {k: v for k, v in training.items() if k not in ("strategy", "num_workers")}


def worker_processes(job: Job) -> int:
    """How many worker actors the job's strategy gives its requirements."""
    found = _strategy_and_settings(job)
    if found is None:  # stored under older rules: its run fails with the reason
        return 1
    strategy, settings = found
    return strategy.worker_count(submitted_job(job), settings)


def extra_shares(job: Job) -> tuple[ExtraShare, ...]:
    """The job's parts beside its requirements' workers (split's loaders)."""
    found = _strategy_and_settings(job)
    if found is None:
        return ()
    strategy, settings = found
    return strategy.extra_shares(submitted_job(job), settings)


def _strategy_and_settings(job: Job) -> tuple[StrategyRules, object] | None:
    knobs = strategy_knobs(job)
    return _parsed(job.strategy, json.dumps(knobs, sort_keys=True, default=str))


def job_settings(job: Job) -> tuple[StrategyRules, object]:
    """The job's strategy rules and its parsed settings, or SettingsError (a strategy this
    gateway does not know, or knobs stored under older rules)."""
    strategy = get_rules(job.strategy)
    knobs = json.dumps(strategy_knobs(job), sort_keys=True, default=str)
    return strategy, _parsed_strictly(job.strategy, knobs)


@functools.lru_cache(maxsize=4096)
def _parsed_strictly(strategy_name: str, knobs: str) -> object:
    """A job's settings, parsed once per distinct spec (they are frozen): the dispatcher and
    the status pages ask for them every round."""
    return get_rules(strategy_name).parse_settings(json.loads(knobs))


@functools.lru_cache(maxsize=4096)
def _parsed(strategy_name: str, knobs: str) -> tuple[StrategyRules, object] | None:
    try:
        strategy = get_rules(strategy_name)
    except SettingsError:
        return None
    try:
        settings = _parsed_strictly(strategy_name, knobs)
    except SettingsError:  # a spec stored under older rules still gets placed
        settings = strategy.parse_settings({})
    return strategy, settings
