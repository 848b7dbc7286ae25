"""One check for every mode's "paid once" promise after a lost attempt: each step's work is
paid by exactly one attempt, the lost attempt only up to its last checkpoint, and what the job
charges is the sum of what its event stream shows as saved."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from fastapi.testclient import TestClient


def stream(client: TestClient, headers: dict, job_id: int) -> list[dict]:
    """A finished job's whole event stream (the stream closes once the job has ended)."""
    items, event = [], None
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                items.append({"event": event, "data": json.loads(line.removeprefix("data: "))})
    return items


def assert_each_step_paid_once(client: TestClient, headers: dict, job: dict) -> int:
    """For a finished job that resumed once; returns the lost attempt's last checkpoint."""
    items = stream(client, headers, job["id"])
    usage = [i["data"] for i in items if i["event"] == "usage"]
    checkpoints = [i["data"] for i in items if i["event"] == "checkpoint"]
    saved_by_first = max(c["step"] for c in checkpoints if c["attempt"] == 1)
    steps = {a: {u["step"] for u in usage if u["attempt"] == a} for a in (1, 2)}
    assert steps[1] and max(steps[1]) <= saved_by_first, (saved_by_first, sorted(steps[1]))
    assert steps[2] and min(steps[2]) > saved_by_first, (saved_by_first, sorted(steps[2]))
    totals: dict[str, float] = defaultdict(float)
    for part in usage:
        totals[str(part["node_id"])] += part["cpu_core_seconds"]
    assert {n: f["cpu_core_seconds"] for n, f in job["usage"].items()} == pytest.approx(totals)
    assert job["unsaved_usage"] == {}
    return saved_by_first


def work_dropped(client: TestClient, headers: dict, job_id: int) -> list[str]:
    """The log lines that name work a lost attempt did after its last checkpoint."""
    lines = client.get(f"/jobs/{job_id}/logs", headers=headers).json()["items"]
    return [line["message"] for line in lines if "not charged or credited" in line["message"]]
