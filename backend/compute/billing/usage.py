"""A job's usage as it is stored (resource-seconds by node, broken down by stage where a
strategy names stages), added up from the runs' usage events, and what it costs so far.

The dispatcher's policy, the metering and what a job has cost all read usage this way; it
lives with billing so that nothing about money depends on the dispatcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ledger.pricing import Rates, ResourceSeconds, price_usage
from protocol.events import RecordedEvent, UsageEvent

UsageTotals = Mapping[str, Mapping[str, float]]  # node id -> resource seconds, as stored

RESOURCE_KEYS = ("gpu_seconds", "cpu_core_seconds", "memory_gb_seconds")


def add_usage(totals: UsageTotals, events: Sequence[RecordedEvent]) -> dict[str, dict]:
    """The job's usage by node after the usage among these events (a new mapping)."""
    return add_usages(totals, [r.event for r in events if isinstance(r.event, UsageEvent)])


def add_usages(totals: UsageTotals, usages: Iterable[UsageEvent]) -> dict[str, dict]:
    """``totals`` plus ``usages`` by node (a new mapping). A node's figures are its totals;
    where usage names a stage ("trainer", "loader"), ``stages`` breaks them down by it."""
    result = {node: _copied(figures) for node, figures in totals.items()}
    for usage in usages:
        current = result.setdefault(str(usage.node_id), dict.fromkeys(RESOURCE_KEYS, 0.0))
        _add(current, usage.figures())
        if usage.stage:
            stages = current.setdefault("stages", {})
            stage = stages.setdefault(usage.stage, dict.fromkeys(RESOURCE_KEYS, 0.0))
            _add(stage, usage.figures())
    return result


def _copied(figures: Mapping) -> dict:
    copy = dict(figures)
    if "stages" in copy:
        copy["stages"] = {stage: dict(values) for stage, values in copy["stages"].items()}
    return copy


def _add(into: dict, figures: Mapping[str, float]) -> None:
    for name, value in figures.items():
        into[name] = float(into.get(name, 0.0)) + value


def resource_seconds(figures: Mapping) -> ResourceSeconds:
    """A node's stored usage as the ledger prices it (its stage breakdown aside)."""
    return ResourceSeconds(**{name: float(figures.get(name, 0.0)) for name in RESOURCE_KEYS})


def usage_by_stage(usage: UsageTotals | None) -> dict[str, dict[str, float]]:
    """The job's usage summed per stage over its nodes (empty for single-stage modes)."""
    stages: dict[str, dict[str, float]] = {}
    for figures in (usage or {}).values():
        for stage, values in (figures.get("stages") or {}).items():
            _add(stages.setdefault(stage, dict.fromkeys(RESOURCE_KEYS, 0.0)), values)
    return stages


def metered(totals: UsageTotals, charged_nodes: frozenset[int], rates: Rates) -> int:
    """What the usage would cost the owner so far (before the cap), in micro-tokens."""
    return sum(
        price_usage(resource_seconds(figures), rates).total
        for node, figures in totals.items()
        if int(node) in charged_nodes
    )
