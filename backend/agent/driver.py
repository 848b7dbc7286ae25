"""A job's driver on its node: `python -m agent.driver`, started by the node's agent for one
attempt, with the job, its run credential and the Ray to use on stdin (never in its
environment or argv, which other users of the machine can read).

It restores the job's last accepted checkpoint from the gateway, starts the job's runner on
the Ray it was given, and relays the runner's events to the gateway (``/runs``). Before a
checkpoint event is relayed, that checkpoint is uploaded and accepted, so the gateway never
counts work as saved that it does not hold; the final model and results are uploaded before
the success that names them. A refusal (the attempt ended, was cancelled or lost) stops the
run; the runner's actors die with this process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.run_client import RunClient, RunRefusedError
from protocol.events import (
    ArtifactEvent,
    CheckpointEvent,
    RecordedEvent,
    RunState,
    StatusEvent,
)
from protocol.run import RunConfig, run_config_from_wire

log = logging.getLogger("distlm.driver")

RELAY_EVERY_S = 0.5
ASK_EVERY_S = 5.0  # with nothing to relay, still ask (a cancel, an ended attempt)
RESULTS_DIR = "results"
TERMINAL = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclasses.dataclass(frozen=True)
class DriverOrder:
    """What the agent hands its driver (stdin, JSON)."""

    gateway_url: str
    run_token: str = dataclasses.field(repr=False)
    config: dict[str, Any]
    ray_address: str
    work_dir: str  # the node's own storage for the job
    data_root: str = ""  # the node's local datasets (empty: none)


def node_config(order: DriverOrder) -> RunConfig:
    """The job as this node runs it: its files under the node's work directory."""
    config = run_config_from_wire(order.config)
    data = dataclasses.replace(config.data, data_root=order.data_root or None)
    return dataclasses.replace(config, storage_path=order.work_dir, data=data)


class Relay:
    """Runner events to the gateway, uploads first."""

    def __init__(self, config: RunConfig, client: RunClient) -> None:
        self.config, self.client = config, client
        self.job_dir = Path(config.job_dir)

    def forward(self, fresh: list[RecordedEvent]) -> tuple[bool, bool]:
        """Relay ``fresh`` in order; (cancel requested, the run ended)."""
        ready: list[RecordedEvent] = []
        ended = False
        for recorded in fresh:
            event = recorded.event
            if isinstance(event, CheckpointEvent):
                self.client.post_events(ready)
                ready = []
                if not self.upload_checkpoint(event):
                    continue  # a later checkpoint will be saved and relayed instead
            elif isinstance(event, ArtifactEvent):
                self.client.upload_directory("model", Path(event.path))
                recorded = dataclasses.replace(recorded, event=ArtifactEvent("model"))
            elif isinstance(event, StatusEvent) and event.state in TERMINAL:
                results = self.job_dir / RESULTS_DIR
                if event.state is RunState.SUCCEEDED and results.is_dir():
                    self.client.post_events(ready)
                    ready = []
                    self.client.upload_directory("results", results)
                ended = True
            ready.append(recorded)
        return self.client.post_events(ready), ended

    def upload_checkpoint(self, event: CheckpointEvent) -> bool:
        """Upload the checkpoint the event names, as it was at that step: copied first (the
        run may save the next one meanwhile), and only if the copy is that step's."""
        from ray_module.strategies.base import CHECKPOINT_DIR
        from ray_module.strategies.registry import get_strategy

        with tempfile.TemporaryDirectory(prefix="distlm-save-") as scratch:
            copy = Path(scratch) / CHECKPOINT_DIR
            try:
                shutil.copytree(event.path, copy)
            except (OSError, shutil.Error) as error:
                log.warning("checkpoint of step %s moved while copied: %s", event.step, error)
                return False
            step = get_strategy(self.config.strategy).checkpointed_step(Path(scratch))
            if step != event.step:
                log.warning("checkpoint of step %s was replaced by step %s", event.step, step)
                return False
            self.client.upload_directory("checkpoint", copy)
        return True


def start_runner(config: RunConfig) -> Any:
    """The job's runner on this node, owned by this process (it and its actors die with
    it). A runner of this job's previous attempt may still be going down: retried."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ray_module.contract import NAMESPACE, runner_name
    from ray_module.runner.job_runner import JobRunner

    for tries in range(30):
        try:
            runner = (
                ray.remote(JobRunner)
                .options(
                    name=runner_name(config.job_id),
                    namespace=NAMESPACE,
                    num_cpus=0,
                    max_concurrency=16,
                    max_restarts=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                        ray.get_runtime_context().get_node_id(), soft=False
                    ),
                )
                .remote(config)
            )
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
        job_dir = Path(config.job_dir)
        if client.download_checkpoint(job_dir / "checkpoint"):
            log.info("job %s: resuming from the gateway's checkpoint", config.job_id)
        import ray

        ray.init(address=order.ray_address, namespace="distlm", log_to_driver=False)
        runner = start_runner(config)
        return relay_until_done(runner, Relay(config, client))
    except RunRefusedError as refused:
        log.info("job %s attempt %s refused: %s", config.job_id, config.attempt, refused)
        return 0
    finally:
        client.close()


def relay_until_done(runner: Any, relay: Relay) -> int:
    import ray

    cursor, asked_at = 0, 0.0
    while True:
        fresh = ray.get(runner.events.remote(cursor), timeout=60)
        if fresh or time.monotonic() - asked_at > ASK_EVERY_S:
            cancel, ended = relay.forward(fresh)
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
