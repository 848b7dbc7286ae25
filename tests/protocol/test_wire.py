"""Run events on the wire: every kind survives JSON unchanged, and what a node may not send
is refused with the reason (the gateway answers 422 and stores nothing)."""

from __future__ import annotations

import json

import pytest

from protocol.events import (
    ArtifactEvent,
    CheckpointEvent,
    LogEvent,
    MetricEvent,
    RecordedEvent,
    RunState,
    StatusEvent,
    UsageEvent,
)
from protocol.wire import WireError, recorded_from_wire, recorded_to_wire

EVENTS = [
    StatusEvent(RunState.FAILED, "a node was lost", retryable=True),
    MetricEvent(12, {"loss": 1.5, "samples": [{"input": "ab", "target": "ba"}]}),
    UsageEvent(3, 1.0, 2.5, 0.5, stage="loader", step=12),
    CheckpointEvent(12, "checkpoint"),
    ArtifactEvent("model"),
    LogEvent("epoch 2 done", level="warning", source="trainer"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_kind_survives_json_unchanged(event) -> None:
    recorded = RecordedEvent(7, 1_700_000_000.5, event)
    sent = json.loads(json.dumps(recorded_to_wire(recorded)))
    assert recorded_from_wire(sent) == recorded


def good(**changes) -> dict:
    base = recorded_to_wire(RecordedEvent(1, 0.0, UsageEvent(2, 0.0, 4.0, 1.0, step=3)))
    return {**base, **changes}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([], "must be a JSON object"),
        (good(kind="shell"), "unknown event kind 'shell'"),
        (good(extra=1), "unknown fields ['extra']"),
        (good(seq=0), "seq must be an integer"),
        (good(seq=True), "seq must be an integer"),
        (good(cpu_core_seconds=-1.0), "cpu_core_seconds must be a finite number >= 0"),
        (good(cpu_core_seconds=float("nan")), "cpu_core_seconds must be a finite number"),
        (good(cpu_core_seconds="1"), "cpu_core_seconds must be a number"),
        (good(node_id=0), "node_id must be an integer"),
        (good(stage="x" * 33), "stage must be a string of at most 32"),
        ({"seq": 1, "at": 0, "kind": "status", "state": "exploded"}, "unknown run state"),
        ({"seq": 1, "at": 0, "kind": "metric", "step": 1, "values": []}, "must be an object"),
        (
            {"seq": 1, "at": 0, "kind": "metric", "step": 1, "values": {"x": "y" * 70_000}},
            "metric values over",
        ),
        ({"seq": 1, "at": 0, "kind": "status", "state": "failed", "retryable": "yes"}, "true or"),
    ],
)
def test_what_a_node_may_not_send_is_refused_with_the_reason(data, problem: str) -> None:
    with pytest.raises(WireError, match=None) as refused:
        recorded_from_wire(data)
    assert problem in str(refused.value)


def test_the_job_as_a_node_receives_it_survives_json_unchanged() -> None:
    from protocol.run import (
        DataRequest,
        JobRequest,
        ModelRequest,
        ResourceRequest,
        RunConfig,
        WorkerPlan,
        run_config_from_wire,
        run_config_to_wire,
    )

    config = RunConfig(
        job_id=4,
        request=JobRequest(
            strategy="split",
            model=ModelRequest("classifier", "mlp", pretrained=False, overrides={"hidden": 32}),
            data=DataRequest("builtin", "digits", max_samples=300, validation_split=0.1),
            knobs={"epochs": 2, "loader": {"cpu_cores": 1, "memory": 1}},
            task="infer",
            inference={"top_k": 3},
            requirements=ResourceRequest(gpu=0, cpu_cores=2.0, memory_gb=2.0),
        ),
        workers=(WorkerPlan(1, 0, 1.0, 1.0), WorkerPlan(2, 0, 1.0, 1.0, role="loader")),
        storage_path="/srv/storage",
        attempt=2,
    )
    sent = json.loads(json.dumps(run_config_to_wire(config)))
    assert run_config_from_wire(sent) == config
