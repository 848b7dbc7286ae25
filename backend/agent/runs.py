"""The agent's runs, where jobs run on the node's own Ray: ask the gateway what this node runs,
start a driver process for each attempt it drives, and stop every driver whose attempt the
gateway no longer lists (ended, cancelled, lost). Drivers get the job and its credential on
stdin and an environment without the agent's secrets."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from agent.driver import DriverOrder
from agent.errors import GatewayError, GatewayUnreachableError
from agent.gateway_client import GatewayClient, NodeIdentity
from protocol.assignment import DRIVER, RunAssignment

log = logging.getLogger("distlm.agent")

CODE_ROOT = str(Path(__file__).resolve().parent.parent)
# What a driver inherits of the agent's environment: nothing secret.
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "RAY_TMPDIR", "CUDA_VISIBLE_DEVICES")
STOP_GRACE_S = 5.0


class Driver:
    """One attempt's driver process, in its own process group."""

    def __init__(self, assignment: RunAssignment, order: DriverOrder, log_path: Path) -> None:
        self.assignment = assignment
        env = {key: os.environ[key] for key in PASSED_ON if key in os.environ}
        env["PYTHONPATH"] = CODE_ROOT
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.driver"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(asdict(order)).encode())
        self.process.stdin.close()

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the driver's group, SIGKILL what is left: its runner and actors go with
        the driver's Ray connection."""
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait_s)
                return


class RunFollower:
    """Keeps this node's drivers in step with the gateway's list of its runs."""

    def __init__(
        self,
        client: GatewayClient,
        identity: NodeIdentity,
        *,
        ray_address: str,
        work_dir: Path,
        data_root: str = "",
    ) -> None:
        self.client, self.identity = client, identity
        self.ray_address, self.work_dir, self.data_root = ray_address, work_dir, data_root
        self.drivers: dict[tuple[int, int], Driver] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name="runs", daemon=True)
        self.thread.start()

    def follow(self, runs: list[RunAssignment]) -> None:
        wanted = {run.key: run for run in runs if run.role == DRIVER}
        for key in list(self.drivers):
            if key not in wanted:
                log.info("job %s attempt %s: no longer ours to run; stopping it", *key)
                self.drivers.pop(key).stop()
        for key, run in wanted.items():
            if key in self.drivers:
                continue  # running, or ended and waiting for the gateway to move on
            log.info("job %s attempt %s: starting its driver", *key)
            order = DriverOrder(
                gateway_url=self.client.base_url,
                run_token=run.run_token or "",
                config=run.config or {},
                ray_address=self.ray_address,
                work_dir=str(self.work_dir),
                data_root=self.data_root,
            )
            self.drivers[key] = Driver(run, order, self.work_dir / "logs" / f"job-{key[0]}.log")

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        for driver in self.drivers.values():
            driver.stop()
        self.drivers.clear()

    def loop(self, poll_s: float = 1.0) -> None:
        """Ask and follow until stopped; an unreachable gateway leaves the runs as they
        are (a link that comes back loses nothing; the gateway decides what was lost)."""
        while not self.stopping.is_set():
            try:
                runs, poll_s = self.client.runs(self.identity)
            except GatewayUnreachableError as error:
                log.warning("cannot ask the gateway for runs: %s", error)
            except GatewayError as error:
                if error.status < 500:
                    log.warning("the gateway refuses to list runs: %s", error)
                    self.follow([])
                    if error.status in (401, 403):
                        return
            else:
                self.follow(runs)
            self.stopping.wait(poll_s)
