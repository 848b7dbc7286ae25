"""A job's usage: the one typed value (``JobUsage``) that carries it from the runner's usage
events to settlement, and the dict it is stored as in the ``jobs.usage`` column.

The dispatcher's policy, the metering, the API and what a job has cost all read usage this
way; it lives with billing so that nothing about money depends on the dispatcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ledger.pricing import Rates, ResourceSeconds, price_usage
from protocol.events import UsageEvent

# The figures of a node (or stage) as stored and shown: ResourceSeconds' own fields.
RESOURCE_KEYS = tuple(f.name for f in fields(ResourceSeconds))


def seconds_used(usage: UsageEvent) -> ResourceSeconds:
    """A runner's usage event as the resource-seconds the ledger prices."""
    return ResourceSeconds(usage.gpu_seconds, usage.cpu_core_seconds, usage.memory_gb_seconds)


def seconds_of(figures: Mapping[str, Any]) -> ResourceSeconds:
    """Stored figures (a missing one is 0); refused as ResourceSeconds refuses bad numbers."""
    return ResourceSeconds(**{name: float(figures.get(name, 0.0)) for name in RESOURCE_KEYS})


def figures_of(seconds: ResourceSeconds) -> dict[str, float]:
    """Resource-seconds as stored and shown by the API."""
    return {name: getattr(seconds, name) for name in RESOURCE_KEYS}


@dataclass(frozen=True)
class NodeWork:
    """One node's saved work: its total, and the part each stage did where a strategy names
    stages ("trainer", "loader"); no stages for single-stage modes."""

    total: ResourceSeconds = field(default_factory=ResourceSeconds)
    stages: Mapping[str, ResourceSeconds] = field(default_factory=dict)

    def plus(self, seconds: ResourceSeconds, stage: str = "") -> NodeWork:
        stages = dict(self.stages)
        if stage:
            stages[stage] = stages.get(stage, ResourceSeconds()) + seconds
        return NodeWork(self.total + seconds, stages)


@dataclass(frozen=True)
class JobUsage:
    """A job's usage by node id. Never changed in place: ``plus`` returns a new value."""

    nodes: Mapping[int, NodeWork] = field(default_factory=dict)

    @classmethod
    def from_column(cls, stored: Mapping[str, Any] | None) -> JobUsage:
        """The ``jobs.usage`` column (``{"<node id>": {figures, "stages": {...}}}``) read."""
        nodes = {}
        for node, figures in (stored or {}).items():
            stages = figures.get("stages") or {}
            nodes[int(node)] = NodeWork(
                seconds_of(figures), {stage: seconds_of(v) for stage, v in stages.items()}
            )
        return cls(nodes)

    def to_column(self) -> dict[str, dict[str, Any]]:
        """As stored in ``jobs.usage`` and shown by the API; ``stages`` only where named."""
        column: dict[str, dict[str, Any]] = {}
        for node, work in self.nodes.items():
            figures: dict[str, Any] = figures_of(work.total)
            if work.stages:
                figures["stages"] = {s: figures_of(v) for s, v in work.stages.items()}
            column[str(node)] = figures
        return column

    def plus(self, usages: Iterable[UsageEvent]) -> JobUsage:
        """This usage and ``usages`` added, per node and per stage."""
        nodes = dict(self.nodes)
        for usage in usages:
            work = nodes.get(usage.node_id, NodeWork())
            nodes[usage.node_id] = work.plus(seconds_used(usage), usage.stage)
        return JobUsage(nodes)

    def of_node(self, node_id: int) -> ResourceSeconds:
        """The node's total (nothing if it did no work for the job)."""
        work = self.nodes.get(node_id)
        return work.total if work is not None else ResourceSeconds()

    def by_node(self, placed_on: Iterable[int] = ()) -> dict[int, ResourceSeconds]:
        """Each node's total, and nothing-yet for the nodes in ``placed_on`` that reported
        none: a job that ran pays the minimum charge even if it ended before any work."""
        totals = {node: work.total for node, work in self.nodes.items()}
        for node in placed_on:
            totals.setdefault(node, ResourceSeconds())
        return totals

    def by_stage(self) -> dict[str, ResourceSeconds]:
        """The usage summed per stage over the nodes (empty for single-stage modes)."""
        stages: dict[str, ResourceSeconds] = {}
        for work in self.nodes.values():
            for stage, seconds in work.stages.items():
                stages[stage] = stages.get(stage, ResourceSeconds()) + seconds
        return stages

    def metered(self, charged_nodes: frozenset[int], rates: Rates) -> int:
        """What the work on ``charged_nodes`` costs the owner so far (before the cap), in
        micro-tokens."""
        return sum(
            price_usage(work.total, rates).total
            for node, work in self.nodes.items()
            if node in charged_nodes
        )
