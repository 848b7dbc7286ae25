"""Prometheus exposition (``GET /metrics``): what the gateway does (HTTP requests, dispatcher
rounds: counted per process, merged across processes by prometheus-client's multiprocess
mode) and what the platform is (jobs, queue waits, durations, tokens, the ledger invariant,
nodes, cluster capacity: read from the database at scrape time, so every process answers the
same). Names follow Prometheus conventions: ``distlm_`` prefix, base units (seconds, tokens),
``_total`` for counters, no user ids in labels."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from compute.dispatch.metrics import DISPATCHER_ERRORS, DISPATCHER_ROUNDS
from compute.dispatch.scheduling import capacity_and_free
from compute.jobs.state import JobStatus
from compute.models import Job, Node
from compute.nodes import trust
from compute.nodes.service import NodeStatus, node_status
from core.db import session_scope, utcnow
from ledger.invariants import ledger_report
from ledger.models import EntryKind, LedgerEntry
from ledger.pricing import tokens

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

HTTP_REQUESTS = Counter(
    "distlm_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "distlm_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)


class PlatformCollector(Collector):
    """The platform as the database has it, at each scrape."""

    def __init__(self, factory: sessionmaker[Session], node_timeout_s: int) -> None:
        self.factory = factory
        self.node_timeout_s = node_timeout_s

    def collect(self) -> Iterator:
        with session_scope(self.factory) as session:
            yield from self._jobs(session)
            yield from self._tokens(session)
            yield from self._nodes(session)

    def _jobs(self, session: Session) -> Iterator:
        by_status = GaugeMetricFamily("distlm_jobs", "Jobs by status", labels=["status"])
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in JobStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        yield by_status
        times = session.execute(
            select(Job.created_at, Job.started_at, Job.finished_at).where(
                Job.started_at.is_not(None)
            )
        ).all()
        waits = [(started - created).total_seconds() for created, started, _ in times]
        durations = [
            (finished - started).total_seconds() for _, started, finished in times if finished
        ]
        yield _histogram("distlm_job_queue_wait_seconds", "From submit to the first start", waits)
        yield _histogram(
            "distlm_job_duration_seconds", "From first start to the end, finished jobs", durations
        )

    def _tokens(self, session: Session) -> Iterator:
        sums = dict(
            session.execute(
                select(LedgerEntry.kind, func.sum(LedgerEntry.amount))
                .where(LedgerEntry.amount > 0)
                .group_by(LedgerEntry.kind)
            ).all()
        )
        charged = -(
            session.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                    LedgerEntry.kind == EntryKind.CHARGE.value
                )
            )
            or 0
        )
        for name, help_text, micro in (
            ("distlm_tokens_charged", "Tokens charged to users for metered work", charged),
            ("distlm_tokens_credited", "Tokens credited to node owners",
             sums.get(EntryKind.NODE_CREDIT.value, 0)),
            ("distlm_tokens_refunded", "Unused holds refunded to users",
             sums.get(EntryKind.REFUND.value, 0)),
            ("distlm_platform_fees", "Tokens kept as platform fees",
             sums.get(EntryKind.PLATFORM_FEE.value, 0)),
            ("distlm_tokens_voided", "Pending node credit given back to the payers",
             sums.get(EntryKind.VOID.value, 0)),
        ):  # fmt: skip
            yield CounterMetricFamily(name, help_text, value=tokens(int(micro or 0)))
        terminal = {s.value for s in JobStatus if s.is_terminal()}
        finished = set(session.scalars(select(Job.id).where(Job.status.in_(terminal))))
        report = ledger_report(session, terminal_job_ids=finished)
        yield GaugeMetricFamily(
            "distlm_tokens_pending",
            "Node owners' earnings charged but not yet released to them",
            value=tokens(report.pending),
        )
        yield GaugeMetricFamily(
            "distlm_ledger_invariant_ok",
            "1 when every ledger invariant holds, 0 when one is broken",
            value=1 if report.invariant_ok else 0,
        )

    def _nodes(self, session: Session) -> Iterator:
        now = utcnow()
        by_status = GaugeMetricFamily("distlm_nodes", "Nodes by status", labels=["status"])
        counts = dict.fromkeys((s.value for s in NodeStatus), 0)
        results = CounterMetricFamily(
            "distlm_node_results", "Nodes' checked results by verdict", labels=["node", "verdict"]
        )
        reliability = GaugeMetricFamily(
            "distlm_node_reliability", "A node's share of valid checked results", labels=["node"]
        )
        for node in session.scalars(select(Node)):
            counts[node_status(node, now=now, timeout_s=self.node_timeout_s).value] += 1
            if node.results_valid or node.results_invalid:
                results.add_metric([str(node.id), "valid"], node.results_valid)
                results.add_metric([str(node.id), "invalid"], node.results_invalid)
                reliability.add_metric([str(node.id)], trust.reliability(node))
        for status, count in counts.items():
            by_status.add_metric([status], count)
        yield by_status
        yield results
        yield reliability
        capacity, free = capacity_and_free(session)
        for unit, field in (("cpus", "cpu_cores"), ("gpus", "gpu")):
            family = GaugeMetricFamily(
                f"distlm_cluster_{unit}",
                f"{unit.upper()} of the schedulable nodes, in total and free",
                labels=["state"],
            )
            family.add_metric(["total"], sum(getattr(n, field) for n in capacity))
            family.add_metric(["free"], max(0, sum(getattr(n, field) for n in free)))
            yield family


def _histogram(name: str, help_text: str, values: list[float]) -> HistogramMetricFamily:
    buckets = []
    for bound in WAIT_BUCKETS:
        buckets.append((str(float(bound)), sum(1 for v in values if v <= bound)))
    buckets.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=sum(values))


PROCESS_METRICS = (HTTP_REQUESTS, HTTP_LATENCY, DISPATCHER_ROUNDS, DISPATCHER_ERRORS)


def exposition(factory: sessionmaker[Session], node_timeout_s: int) -> bytes:
    """The text format: the request and dispatcher figures (of every gateway process, in
    multiprocess mode) and the platform's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # every process's counters, from their files
    else:
        for metric in PROCESS_METRICS:
            registry.register(metric)
    registry.register(PlatformCollector(factory, node_timeout_s))
    return generate_latest(registry)
