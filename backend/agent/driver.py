"""A job's driver on its node: `python -m agent.driver`, started by the node's agent for one
attempt, with the job, its run credential and the Ray to use on stdin (never in its
environment or argv, which other users of the machine can read).

It fetches what the attempt starts from (the last accepted checkpoint, a source job's
model), starts the job's runner on the Ray it was given, and relays the runner's events to
the gateway (``/runs``). Whatever a worker saves it uploads itself, from its node, before the
event that names it (``gateway_files``): the gateway never counts work as saved that it
does not hold. A refusal (the attempt ended, was cancelled or lost) stops the run; the
runner's actors die with this process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

from protocol.events import RecordedEvent, RunState, StatusEvent
from protocol.run import PublishTarget, RunConfig, run_config_from_wire
from ray_module.storage.gateway_files import RunClient, RunRefusedError, fetch_inputs

log = logging.getLogger("distlm.driver")

RELAY_EVERY_S = 0.5
ASK_EVERY_S = 5.0  # with nothing to relay, still ask (a cancel, an ended attempt)
CLUSTER_FORM_TIMEOUT_S = 120.0
TERMINAL = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclasses.dataclass(frozen=True)
class DriverOrder:
    """What the agent hands its driver (stdin, JSON)."""

    gateway_url: str
    run_token: str = dataclasses.field(repr=False)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    ray_address: str = ""
    work_dir: str = ""  # the node's own storage for the job
    data_root: str = ""  # the node's local datasets (empty: none)
    ray_token: str = dataclasses.field(default="", repr=False)  # the Ray's token, if any
    cluster_nodes: tuple[int, ...] = ()  # every node of a multi-node job's cluster


def node_config(order: DriverOrder) -> RunConfig:
    """The job as this node runs it: its files under the node's work directory, what it
    saves published to the gateway."""
    config = run_config_from_wire(order.config)
    data = dataclasses.replace(config.data, data_root=order.data_root or None)
    request = dataclasses.replace(config.request, data=data)
    target = PublishTarget(order.gateway_url, config.job_id, config.attempt, order.run_token)
    return dataclasses.replace(config, request=request, storage_path=order.work_dir, publish=target)


def relay(client: RunClient, fresh: list[RecordedEvent]) -> tuple[bool, bool]:
    """Relay ``fresh`` in order; (cancel requested, the run ended)."""
    ended = any(isinstance(r.event, StatusEvent) and r.event.state in TERMINAL for r in fresh)
    return client.post_events(fresh), ended


def start_runner(config: RunConfig) -> Any:
    """The job's runner on this node, owned by this process (it and its actors die with
    it). A runner of this job's previous attempt may still be going down: retried."""
    import ray

    from ray_module.runner.client import runner_actor

    for tries in range(30):
        try:
            runner = runner_actor(config)
            break
        except ValueError:  # the name is still taken
            if tries == 29:
                raise
            time.sleep(1)
    ray.get(runner.start.remote(), timeout=120)
    return runner


def drive(order: DriverOrder) -> int:
    config = node_config(order)
    client = RunClient(order.gateway_url, order.run_token, config.job_id, config.attempt)
    try:
        config = fetch_inputs(config)
        # The Ray's own token (the node's Ray, a job's cluster, a pool that uses one), or
        # none, never a token file another Ray left in ~/.ray.
        if order.ray_token:
            os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=order.ray_token)
        else:
            os.environ["RAY_AUTH_MODE"] = "disabled"
        import ray

        # Ray's own guess of this machine's address needs a default route; the Ray this
        # driver is given runs on this machine, at the address it serves.
        host = order.ray_address.rsplit(":", 1)[0]
        ray.init(
            address=order.ray_address,
            namespace="distlm",
            log_to_driver=False,
            _node_ip_address=host,
        )
        try:
            wait_for_cluster(order.cluster_nodes)
            runner = start_runner(config)
        except Exception as error:  # nothing ran yet: say so now, not at the start timeout
            log.exception("job %s: the attempt could not start", config.job_id)
            failed = StatusEvent(RunState.FAILED, f"could not start: {error}", retryable=True)
            client.post_events([RecordedEvent(1, time.time(), failed)])
            return 1
        return relay_until_done(runner, client)
    except RunRefusedError as refused:
        log.info("job %s attempt %s refused: %s", config.job_id, config.attempt, refused)
        # Refused (the attempt ended): nothing to report. A damaged download: the agent
        # reports this driver gone, and the attempt resumes elsewhere.
        return 1 if refused.status >= 500 else 0
    finally:
        client.close()


def wait_for_cluster(nodes: tuple[int, ...]) -> None:
    """Every node of a multi-node job has joined its cluster (or the attempt fails)."""
    from ray_module.resources import live_nodes

    deadline = time.monotonic() + CLUSTER_FORM_TIMEOUT_S
    while True:
        joined = {n for n, live in live_nodes().items() if live.alive}
        if set(nodes) <= joined:
            return
        if time.monotonic() > deadline:
            missing = sorted(set(nodes) - joined)
            raise ConnectionError(f"nodes {missing} did not join the job's cluster")
        time.sleep(0.2)


def relay_until_done(runner: Any, client: RunClient) -> int:
    import ray

    cursor, asked_at = 0, 0.0
    while True:
        fresh = ray.get(runner.events.remote(cursor), timeout=60)
        if fresh or time.monotonic() - asked_at > ASK_EVERY_S:
            cancel, ended = relay(client, fresh)
            asked_at = time.monotonic()
            if fresh:
                cursor = fresh[-1].seq
            if ended:
                return 0
            if cancel:
                runner.cancel.remote()
        time.sleep(RELAY_EVERY_S)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    order = DriverOrder(**json.loads(sys.stdin.read()))
    sys.exit(drive(order))


if __name__ == "__main__":
    main()
