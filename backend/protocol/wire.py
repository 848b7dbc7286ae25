"""Run events as JSON, for a driver on a node reporting to the gateway over HTTP.

What arrives from a node is untrusted: ``recorded_from_wire`` accepts only the known kinds
with fields of the right types and bounded sizes, and raises ``WireError`` (a ``ValueError``)
naming what is wrong, so the gateway answers 422 and stores nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from protocol.events import (
    ArtifactEvent,
    CheckpointEvent,
    Event,
    LogEvent,
    MetricEvent,
    RecordedEvent,
    RunState,
    StatusEvent,
    UsageEvent,
    VerdictEvent,
)

KINDS: dict[str, type] = {
    "status": StatusEvent,
    "metric": MetricEvent,
    "usage": UsageEvent,
    "checkpoint": CheckpointEvent,
    "artifact": ArtifactEvent,
    "log": LogEvent,
    "verdict": VerdictEvent,
}
KIND_OF = {cls: kind for kind, cls in KINDS.items()}
MAX_TEXT = 10_000  # characters in a reason, a message, a path
MAX_METRIC_BYTES = 64_000  # one metric point's values, as JSON
MAX_STEP = 2**31 - 1


class WireError(ValueError):
    """A run event that is not what the protocol allows."""


def recorded_to_wire(recorded: RecordedEvent) -> dict[str, Any]:
    event = recorded.event
    fields = dataclasses.asdict(event)
    if isinstance(event, StatusEvent):
        fields["state"] = event.state.value
    return {"seq": recorded.seq, "at": recorded.at, "kind": KIND_OF[type(event)], **fields}


def recorded_from_wire(data: Any) -> RecordedEvent:
    if not isinstance(data, dict):
        raise WireError("an event must be a JSON object")
    seq = _integer(data, "seq", 1, 2**62)
    at = _number(data, "at")
    kind = data.get("kind")
    if kind not in KINDS:
        raise WireError(f"unknown event kind {kind!r}; one of {sorted(KINDS)}")
    fields = {k: v for k, v in data.items() if k not in ("seq", "at", "kind")}
    return RecordedEvent(seq, at, _event(kind, fields))


def _event(kind: str, fields: dict[str, Any]) -> Event:
    cls = KINDS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise WireError(f"{kind} event has unknown fields {sorted(unknown)}")
    if kind == "status":
        try:
            state = RunState(fields.get("state"))
        except ValueError:
            raise WireError(f"unknown run state {fields.get('state')!r}") from None
        return StatusEvent(state, _text(fields, "reason"), _flag(fields, "retryable"))
    if kind == "metric":
        values = fields.get("values")
        if not isinstance(values, dict):
            raise WireError("metric values must be an object")
        if len(json.dumps(values)) > MAX_METRIC_BYTES:
            raise WireError(f"metric values over {MAX_METRIC_BYTES} bytes")
        return MetricEvent(_integer(fields, "step", 0, MAX_STEP), values)
    if kind == "usage":
        return UsageEvent(
            _integer(fields, "node_id", 1, MAX_STEP),
            *(_number(fields, name, default=0.0) for name in UsageEvent.RESOURCE_FIELDS),
            stage=_text(fields, "stage", limit=32),
            step=_integer(fields, "step", 0, MAX_STEP, default=0),
        )
    if kind == "checkpoint":
        return CheckpointEvent(_integer(fields, "step", 0, MAX_STEP), _text(fields, "path"))
    if kind == "artifact":
        return ArtifactEvent(_text(fields, "path"))
    if kind == "verdict":
        return VerdictEvent(
            _integer(fields, "node_id", 1, MAX_STEP),
            _integer(fields, "step", 0, MAX_STEP),
            _flag(fields, "valid", required=True),
            checked=_integer(fields, "checked", 0, MAX_STEP, default=0),
            validator_node_id=_integer(fields, "validator_node_id", 0, MAX_STEP, default=0),
            detail=_text(fields, "detail", limit=500),
        )
    return LogEvent(
        _text(fields, "message"),
        _text(fields, "level", limit=16) or "info",
        _text(fields, "source", limit=32) or "runner",
    )


def _integer(data: dict, name: str, low: int, high: int, default: int | None = None) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise WireError(f"{name} must be an integer from {low} to {high}")
    return value


def _number(data: dict, name: str, default: float | None = None) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{name} must be a number")
    if not math.isfinite(value) or value < 0:
        raise WireError(f"{name} must be a finite number >= 0")
    return float(value)


def _text(data: dict, name: str, limit: int = MAX_TEXT) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise WireError(f"{name} must be a string of at most {limit} characters")
    return value


def _flag(data: dict, name: str, *, required: bool = False) -> bool:
    value = data.get(name, None if required else False)
    if not isinstance(value, bool):
        raise WireError(f"{name} must be true or false")
    return value
