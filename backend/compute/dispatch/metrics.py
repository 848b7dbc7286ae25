"""The dispatcher's own figures for Prometheus: how long its rounds take, how many fail."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

DISPATCHER_ROUNDS = Histogram(
    "distlm_dispatcher_round_duration_seconds",
    "Time of a dispatcher round of the leading process",
    buckets=ROUND_BUCKETS,
)
DISPATCHER_ERRORS = Counter(
    "distlm_dispatcher_round_errors_total", "Dispatcher rounds that raised an error"
)
