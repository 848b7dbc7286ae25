"""A ban shuts a node out of the Ray cluster for real (issue 11, item 3), on the real
launcher and real `ray start` workers: the gateway restarts its Ray with a new token, the
banned node's token no longer runs anything, an approved agent rejoins on its own, and a
job running at the time resumes from its checkpoint. Job code on a node that
is not the gateway's machine does not see the gateway's secrets."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.gateway_process import (
    PYTHON,
    ROOT,
    running_gateway,
    start_agent_process,
    unique_hostname,
)
from tests.polling import wait_for

SECRET_KEY = "rotation-test-secret-key-0123456789abcdef"

# A driver holding some token: runs one task on the given node resource and reports what
# that task's environment holds of the gateway's secrets.
TASK_PROBE = """
import json, os, sys
import ray

address, resource, secret = sys.argv[1], sys.argv[2], sys.argv[3]
ray.init(address=address, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0, resources={resource: 1})
def look():
    env = os.environ
    return {
        "secret_in_env": any(secret in value for value in env.values()),
        "distlm_vars": sorted(k for k in env if k.startswith("DISTLM_")),
    }

print(json.dumps(ray.get(look.remote(), timeout=60)), flush=True)
"""


def run_task_probe(join: dict[str, Any], token: str, resource: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTLM_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PYTHONPATH=str(ROOT / "backend"))
    return subprocess.run(
        [PYTHON, "-c", TASK_PROBE, join["ray_address"], resource, SECRET_KEY],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


ES_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    # At least 0.1 s a step, checkpointed every 5: hours of steps, so it is still running at
    # the ban and after the restart, however fast or slow the machine; the test cancels it.
    "training_config": {
        "steps": 100_000,
        "time_per_step_s": 0.1,
        "checkpoint_interval": 5,
        "validation_interval": 50,
    },
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
}


@pytest.mark.ray
@pytest.mark.slow
def test_a_ban_restarts_the_cluster_with_a_token_only_approved_nodes_get(tmp_path: Path) -> None:
    (tmp_path / "gateway").mkdir()
    with running_gateway(
        tmp_path / "gateway", DISTLM_SECRET_KEY=SECRET_KEY, DISTLM_RUN_JOBS_ON="gateway"
    ) as gateway:
        (tmp_path / "staying").mkdir()
        agent, agent_log = start_agent_process(gateway, tmp_path / "staying", unique_hostname())
        try:
            staying_id = wait_for(
                lambda: (
                    (agent.poll() is None or pytest.fail(agent_log.read_text()))
                    and (tmp_path / "staying" / "node.json").is_file()
                    and json.loads((tmp_path / "staying" / "node.json").read_text())["node_id"]
                ),
                timeout_s=60,
                what="the agent to register",
            )
            wait_for(
                lambda: gateway.as_owner("GET", f"/nodes/{staying_id}")["status"] == "online",
                timeout_s=60,
                what="the agent's Ray worker to join",
            )
            staying_resource = f"distlm_node_{staying_id}"

            # The node to be banned: registered and approved, it fetches the join info.
            banned = gateway.as_owner(
                "POST",
                "/nodes/register",
                json={
                    "hostname": unique_hostname(),
                    "resources": {"gpu": 0, "cpu_cores": 1, "memory": 1},
                },
            )
            node_auth = {"Authorization": f"Bearer {banned['credential']}"}
            old = httpx.get(f"{gateway.base}/nodes/{banned['id']}/join", headers=node_auth)
            assert old.status_code == 200, old.text
            old_join = old.json()

            # Its token runs code on the cluster, on another owner's node even (Ray's trust
            # model); that node's job code does not see the gateway's secret key.
            before = run_task_probe(old_join, old_join["ray_auth_token"], staying_resource)
            assert before.returncode == 0, before.stderr[-2000:]
            assert json.loads(before.stdout) == {"secret_in_env": False, "distlm_vars": []}

            job = gateway.as_admin("POST", "/jobs/submit", json=ES_JOB)
            wait_for(
                lambda: (
                    "checkpointed" in gateway.as_admin("GET", f"/jobs/{job['id']}")["status_reason"]
                ),
                timeout_s=120,
                what="the job to run and checkpoint",
            )

            gateway.as_admin("POST", f"/nodes/{banned['id']}/ban")
            refused = httpx.get(f"{gateway.base}/nodes/{banned['id']}/join", headers=node_auth)
            assert refused.status_code == 403 and refused.json()["error"] == "node_banned"

            def new_join() -> dict[str, Any] | None:
                answer = httpx.get(
                    f"{gateway.base}/nodes/{staying_id}/join",
                    headers={"Authorization": f"Bearer {gateway.owner_token}"},
                )
                if answer.status_code != 200:
                    assert answer.json()["error"] == "cluster_restarting", answer.text
                    return None
                body = answer.json()
                changed = body["cluster_fingerprint"] != old_join["cluster_fingerprint"]
                return body if changed else None

            fresh = wait_for(new_join, timeout_s=60, what="the cluster to get a new token")
            assert fresh["ray_auth_token"] != old_join["ray_auth_token"]
            beat = gateway.as_owner("POST", f"/nodes/{staying_id}/heartbeat")
            assert beat["cluster_fingerprint"] == fresh["cluster_fingerprint"]

            # The approved agent rejoins on its own: the new token runs a task on its node
            # (the probe waits for the node to be back); the banned node's old token runs
            # nothing on the new cluster.
            wait_for(
                lambda: "rejoining with the new ones" in agent_log.read_text(),
                timeout_s=60,
                what="the agent to see the new fingerprint",
            )
            with_new = run_task_probe(fresh, fresh["ray_auth_token"], staying_resource)
            assert with_new.returncode == 0, with_new.stderr[-2000:] + agent_log.read_text()
            assert json.loads(with_new.stdout)["secret_in_env"] is False
            wait_for(
                lambda: gateway.as_owner("GET", f"/nodes/{staying_id}")["status"] == "online",
                timeout_s=30,
                what="the gateway to see the rejoined node",
            )
            after = run_task_probe(fresh, old_join["ray_auth_token"], staying_resource)
            assert after.returncode != 0, after.stdout

            # The job running at the ban resumed on the new cluster from its checkpoint, and
            # trained and checkpointed there; then it is cancelled.
            def job_now() -> dict[str, Any]:
                current = gateway.as_admin("GET", f"/jobs/{job['id']}")
                assert current["status"] in ("queued", "running"), current
                return current

            wait_for(
                lambda: (
                    (j := job_now())["status_reason"].startswith("running (attempt 2)")
                    and "checkpointed" in j["status_reason"]
                ),
                timeout_s=180,
                what=lambda: f"the job to resume and checkpoint after the restart: {job_now()}",
            )
            gateway.as_admin("POST", f"/jobs/{job['id']}/cancel")
            done = wait_for(
                lambda: (
                    (j := gateway.as_admin("GET", f"/jobs/{job['id']}"))["status"]
                    in ("succeeded", "failed", "cancelled")
                    and j
                ),
                timeout_s=120,
                what="the job to stop when cancelled",
            )
            assert done["status"] == "cancelled", done["status_reason"]
            assert done["attempts"] == 2
            steps = [
                point["step"]
                for point in gateway.as_admin(
                    "GET", f"/metrics/training/{job['id']}", params={"limit": 10_000}
                )["series"]
            ]
            assert steps.count(1) == 1, "the second attempt started over instead of resuming"
            assert "shutting out node" in gateway.log_path.read_text()
        finally:
            if agent.poll() is None:
                agent.terminate()
                try:
                    agent.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait(timeout=10)
