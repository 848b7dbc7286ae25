"""A stored job as its strategy sees it: the request stored at submit, how many workers its
strategy gives the requirements and the parts beside them (split's loaders). Read by the
scheduler, billing and the run config alike."""

from __future__ import annotations

import functools
import json

from compute.models import Job
from protocol.errors import SettingsError
from protocol.placement import ExtraShare
from protocol.run import JobRequest, job_request_from_wire
from protocol.strategies.registry import get_rules
from protocol.strategies.rules import StrategyRules


def job_request(job: Job) -> JobRequest:
    """What the job's user asked to run, as checked and stored at submit."""
    return job_request_from_wire(job.request)


def worker_processes(job: Job) -> int:
    """How many worker actors the job's strategy gives its requirements."""
    request = job_request(job)
    found = _strategy_and_settings(request)
    if found is None:  # stored under older rules: its run fails with the reason
        return 1
    strategy, settings = found
    return strategy.worker_count(request, settings)


def extra_shares(job: Job) -> tuple[ExtraShare, ...]:
    """The job's parts beside its requirements' workers (split's loaders)."""
    request = job_request(job)
    found = _strategy_and_settings(request)
    if found is None:
        return ()
    strategy, settings = found
    return strategy.extra_shares(request, settings)


def _strategy_and_settings(request: JobRequest) -> tuple[StrategyRules, object] | None:
    return _parsed(request.strategy, _knobs_key(request))


def job_settings(job: Job) -> tuple[StrategyRules, object]:
    """The job's strategy rules and its parsed settings, or SettingsError (a strategy this
    gateway does not know, or knobs stored under older rules)."""
    request = job_request(job)
    strategy = get_rules(request.strategy)
    return strategy, _parsed_strictly(request.strategy, _knobs_key(request))


def _knobs_key(request: JobRequest) -> str:
    """The knobs as a cache key: equal knobs, one parse."""
    return json.dumps(request.knobs, sort_keys=True, default=str)


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
