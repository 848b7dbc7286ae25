"""Jobs across separate hosts (issue 20): a gateway host and two node hosts made of Linux
namespaces on this machine (tests/hosts/network.py; needs root), the real launcher and real
`distlm-node` agents, jobs on the nodes' own Ray. Prints, per repetition:

- submit -> running and submit -> first step of a single-node job on a warm node (the
  node's own Ray is already up): the platform's start latency;
- the same for a two-node job (a split job: loaders on one host, trainer on the other),
  whose attempt first forms a Ray cluster of its own (head, token, the other node joining);
- a node's link cut mid-job -> the job running again on the other host, against
  NODE_TIMEOUT (the gateway must first notice the silence).

    PYTHONPATH=backend .venv/bin/python benchmarks/across_machines.py --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import report
from tests.hosts.platform import NODE_TIMEOUT_S, Platform, running_platform
from tests.polling import wait_for

SINGLE = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text", "max_samples": 200},
    "training_config": {"steps": 5, "population": 8, "checkpoint_interval": 5},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.5},
}
TWO_NODES = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 200},
    "training_config": {"strategy": "split", "epochs": 1,
                        "loader": {"cpu_cores": 2, "memory": 0.25}},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.25},
}  # fmt: skip
LONG = {**SINGLE, "training_config": {"steps": 400, "population": 32, "checkpoint_interval": 20}}


def at(text: str | None) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


def start_figures(platform: Platform, body: dict) -> tuple[float, float]:
    """(submit -> running, submit -> first step) in seconds, from the gateway's own times."""
    user = platform.user
    job = user.call("POST", "/jobs/submit", json=body)
    done = wait_for(lambda: user.finished(job["id"]), timeout_s=300, every_s=0.2)
    assert done["status"] == "succeeded", done["status_reason"]
    created = at(done["created_at"])
    return at(done["started_at"]) - created, at(done["first_step_at"]) - created


def link_down_figure(platform: Platform) -> float:
    user = platform.user
    job = user.call("POST", "/jobs/submit", json=LONG)
    wait_for(lambda: user.job(job["id"])["first_step_at"], timeout_s=120, every_s=0.2)
    (node_id,) = {slot["node_id"] for slot in user.job(job["id"])["placement"]}
    host = platform.host_of(node_id)
    host.link_down()
    cut = time.monotonic()
    try:
        wait_for(
            lambda: (j := user.job(job["id"]))["attempts"] == 2 and j["status"] == "running",
            timeout_s=120,
            every_s=0.1,
        )
        elapsed = time.monotonic() - cut
    finally:
        host.link_up()
    user.call("POST", f"/jobs/{job['id']}/cancel")
    wait_for(lambda: platform.node_status(host) == "online", timeout_s=60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with running_platform(Path(tempfile.mkdtemp(prefix="distlm-across-"))) as platform:
        rows = {"single-node job, warm node": SINGLE, "two-node job, own cluster": TWO_NODES}
        print("| job | submit -> running (s) | submit -> first step (s) |")
        print("|---|---|---|")
        for name, body in rows.items():
            figures = [start_figures(platform, body) for _ in range(args.repeat)]
            running = statistics.median(f[0] for f in figures)
            first = statistics.median(f[1] for f in figures)
            print(f"| {name} | {running:.2f} | {first:.2f} |")
            report("across_machines", f"{name}: submit -> first step", first, unit="s")
        downs = [link_down_figure(platform) for _ in range(args.repeat)]
        print(
            f"\nlink down -> running elsewhere: median {statistics.median(downs):.1f} s "
            f"(NODE_TIMEOUT {NODE_TIMEOUT_S} s: {statistics.median(downs) / NODE_TIMEOUT_S:.2f}x), "
            f"all {', '.join(f'{d:.1f}' for d in downs)}"
        )
        report("across_machines", "link down -> running elsewhere", statistics.median(downs),
               unit="s", baseline=NODE_TIMEOUT_S, baseline_name="NODE_TIMEOUT",
               aim="<= 2")  # fmt: skip


if __name__ == "__main__":
    main()
