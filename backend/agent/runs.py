"""The agent's runs, where jobs run on the node's own Ray: ask the gateway what this node runs,
start a driver process for each attempt it drives, and stop every driver whose attempt the
gateway no longer lists (ended, cancelled, lost). Drivers get the job and its credential on
stdin and an environment without the agent's secrets."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.driver import DriverOrder
from agent.errors import GatewayError, GatewayUnreachableError
from agent.gateway_client import GatewayClient, NodeIdentity
from agent.own_ray import OwnRay
from agent.ray_worker import RayWorker
from protocol.assignment import DRIVER, RunAssignment
from protocol.nodes import JoinInfo
from ray_module.cluster import ClusterConfig
from ray_module.head import HeadDirectory, HeadRecord, start_head, stop_head
from ray_module.ports import allocate_ray_ports
from ray_module.process import die_with_parent
from ray_module.resources import NODE_LABEL, node_resource

log = logging.getLogger("distlm.agent")

CODE_ROOT = str(Path(__file__).resolve().parent.parent)
# What a driver inherits of the agent's environment: nothing secret.
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "RAY_TMPDIR", "CUDA_VISIBLE_DEVICES")
STOP_GRACE_S = 5.0
RESOURCE_UNITS = 1000  # of the node's custom resource in a job's cluster (as on the gateway's)


@dataclass(frozen=True)
class RayPool:
    """A trusted pool: an operator's own Ray cluster that this node is a member of (the
    agent's ``--ray-address``). Its jobs run there, multi-node ones too, with no cluster of
    their own; the gateway places a multi-node job only on nodes of one pool."""

    token: str = field(default="", repr=False)  # the pool's Ray token, if it uses one
    ready: Callable[[], bool] = lambda: True  # this node's member of the pool is up


class Driver:
    """One attempt's driver process, in its own process group."""

    def __init__(self, assignment: RunAssignment, order: DriverOrder, log_path: Path) -> None:
        self.assignment, self.log_path = assignment, log_path
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
                preexec_fn=die_with_parent,  # an agent killed takes its drivers with it
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
    """Keeps this node in step with the gateway's list of its runs: a driver per attempt it
    drives; for a multi-node attempt also the job's own Ray cluster (its head where this
    node drives, a member joining it elsewhere), started with the attempt's token and
    stopped with the attempt."""

    def __init__(
        self,
        client: GatewayClient,
        identity: NodeIdentity,
        *,
        ray_address: str,
        work_dir: Path,
        node_address: str = "127.0.0.1",
        data_root: str = "",
        object_store_mb: int | None = None,
        single_node_only: bool = False,
        warm_ray: OwnRay | None = None,
        pool: RayPool | None = None,
        offers: dict[str, float] | None = None,
    ) -> None:
        self.client, self.identity = client, identity
        self.ray_address, self.work_dir, self.data_root = ray_address, work_dir, data_root
        self.node_address, self.object_store_mb = node_address, object_store_mb
        self.single_node_only = single_node_only
        self.warm_ray = warm_ray  # the node's own Ray at ``ray_address``, kept up
        self.pool = pool  # or: ``ray_address`` is a trusted pool this node is a member of
        self.offers = offers  # what this machine offers ({cpu_cores, gpu}), told the gateway
        self.drivers: dict[tuple[int, int], Driver] = {}
        self.heads: dict[tuple[int, int], HeadRecord] = {}
        # Heads being started, and drivers, heads and members being stopped: seconds each
        # (tens on a loaded machine), while the loop goes on asking for runs, or the gateway
        # takes this node for silent and moves its jobs. The threads live as long as the
        # follower: a head dies with the thread that started it (its parent-death signal).
        self.starting: dict[tuple[int, int], Future[HeadRecord]] = {}
        self.background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="runs-bg")
        self.members: dict[tuple[int, int], RayWorker] = {}
        self.unreported: dict[tuple[int, int], str] = {}  # heads the gateway has not echoed
        self.lost: dict[tuple[int, int], str] = {}  # drivers gone without a word, and why
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name="runs", daemon=True)
        self.thread.start()

    def follow(self, runs: list[RunAssignment]) -> None:
        wanted = {run.key: run for run in runs}
        for key in [k for k in self.drivers if k not in wanted or wanted[k].role != DRIVER]:
            log.info("job %s attempt %s: no longer ours to run; stopping it", *key)
            self.background.submit(self.drivers.pop(key).stop)
        for key in [k for k in self.heads if k not in wanted]:
            self.background.submit(stop_head, self.heads.pop(key))
            self.unreported.pop(key, None)
        for key in [k for k in self.starting if k not in wanted]:
            self.starting.pop(key).add_done_callback(_stop_started_head)
        for key in [k for k in self.members if k not in wanted]:
            self.background.submit(self.members.pop(key).stop, timeout_s=5)
        for key in [k for k in self.lost if k not in wanted]:
            del self.lost[key]  # the gateway moved on
        for key, driver in self.drivers.items():
            code = driver.process.poll()
            if key in wanted and code not in (None, 0) and key not in self.lost:
                self.lost[key] = f"it exited with code {code} (its log: {driver.log_path})"
        for key, run in wanted.items():
            try:
                if run.role == DRIVER:
                    self.drive(run)
                elif run.cluster is not None and run.cluster.address:
                    self.join_cluster(run)
            except Exception:  # one run's trouble must not stop the others
                log.exception("job %s attempt %s: could not start its part", *key)

    def drive(self, run: RunAssignment) -> None:
        # The node's own Ray by default (its token), a pool, or a job's own cluster.
        ray_address, nodes = self.ray_address, ()
        ray_token = self.warm_ray.token if self.warm_ray is not None else ""
        if self.pool is not None:  # every node of the job is in the pool already
            ray_token = self.pool.token
            if run.cluster is not None:
                self.note_address(run, self.ray_address)
                nodes = run.cluster.nodes
        elif run.cluster is not None:  # a multi-node attempt: a cluster of its own, headed here
            head = self.started_head(run)
            if head is None:
                return  # its head is starting
            self.note_address(run, head.address)
            ray_address, ray_token, nodes = head.address, run.cluster.token, run.cluster.nodes
        if run.key in self.drivers or run.key in self.lost:
            return  # running, or ended and waiting for the gateway to move on
        if run.started:  # begun by this node's agent in an earlier life: that driver is gone
            self.lost[run.key] = "the node's agent restarted and lost it"
            return
        log.info("job %s attempt %s: starting its driver", *run.key)
        order = DriverOrder(
            gateway_url=self.client.base_url,
            run_token=run.run_token or "",
            config=run.config or {},
            ray_address=ray_address,
            work_dir=str(self.work_dir),
            data_root=self.data_root,
            ray_token=ray_token,
            cluster_nodes=tuple(nodes),
        )
        log_path = self.work_dir / "logs" / f"job-{run.job_id}-attempt-{run.attempt}.log"
        self.drivers[run.key] = Driver(run, order, log_path)

    def note_address(self, run: RunAssignment, address: str) -> None:
        """The gateway tells the job's other nodes where its cluster is once it knows."""
        assert run.cluster is not None
        if run.cluster.address != address:
            self.unreported[run.key] = address  # told at the next ask
        else:
            self.unreported.pop(run.key, None)

    def started_head(self, run: RunAssignment) -> HeadRecord | None:
        """The attempt's head once it serves; None while it starts, in the background (a
        head that failed to start is tried again at the next ask)."""
        if run.key in self.heads:
            return self.heads[run.key]
        starting = self.starting.get(run.key)
        if starting is None:
            self.starting[run.key] = self.background.submit(self.start_head, run)
            return None
        if not starting.done():
            return None
        del self.starting[run.key]
        self.heads[run.key] = starting.result()  # its error, if any, is logged by follow
        return self.heads[run.key]

    def start_head(self, run: RunAssignment) -> HeadRecord:
        assert run.cluster is not None and run.share is not None
        log.info("job %s attempt %s: starting its cluster's head", *run.key)
        config = ClusterConfig(
            num_cpus=max(1, math.ceil(run.share.cpu_cores)),
            num_gpus=run.share.gpu,
            resources={node_resource(self.identity.node_id): RESOURCE_UNITS},
            labels={NODE_LABEL: str(self.identity.node_id)},
            object_store_mb=self.object_store_mb or 256,
            auth_token=run.cluster.token,
        )
        directory = HeadDirectory(self.work_dir / "ray" / f"job-{run.job_id}-{run.attempt}")
        return start_head(config, directory, host=self.node_address, die_with_parent=True)

    def join_cluster(self, run: RunAssignment) -> None:
        if run.key in self.members:
            return
        assert run.cluster is not None and run.share is not None
        if self.pool is not None:
            if run.cluster.address != self.ray_address:  # the gateway places pools apart
                log.warning("job %s attempt %s: its cluster is not this pool", *run.key)
            return  # a member already
        log.info("job %s attempt %s: joining its cluster at %s", *run.key, run.cluster.address)
        join = JoinInfo(
            node_id=self.identity.node_id,
            ray_address=run.cluster.address,
            num_cpus=max(1, math.ceil(run.share.cpu_cores)),
            num_gpus=run.share.gpu,
            memory_gb=max(run.share.memory_gb, 0.1),
            resources={node_resource(self.identity.node_id): RESOURCE_UNITS},
            labels={NODE_LABEL: str(self.identity.node_id)},
            heartbeat_interval_s=1.0,
            ray_auth_token=run.cluster.token,
        )
        member = RayWorker(
            join,
            log_path=self.work_dir / "logs" / f"job-{run.job_id}-attempt-{run.attempt}.ray.log",
            object_store_mb=self.object_store_mb,
            node_address=self.node_address,
            ports=allocate_ray_ports(self.node_address),
        )
        member.start(settle_s=0.5)
        self.members[run.key] = member

    def reports(self) -> list[dict[str, object]]:
        return [
            {"job_id": job_id, "attempt": attempt, "address": address}
            for (job_id, attempt), address in self.unreported.items()
        ]

    def lost_reports(self) -> list[dict[str, object]]:
        return [
            {"job_id": job_id, "attempt": attempt, "why": why}
            for (job_id, attempt), why in self.lost.items()
        ]

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        for driver in self.drivers.values():
            driver.stop()
        for head in self.heads.values():
            stop_head(head)
        for starting in self.starting.values():
            starting.add_done_callback(_stop_started_head)
        self.background.shutdown(wait=True)  # every stop and the callbacks above done
        for member in self.members.values():
            member.stop(timeout_s=5)
        self.drivers.clear()
        self.heads.clear()
        self.starting.clear()
        self.members.clear()

    def warm_ray_up(self) -> bool:
        """The node's own Ray answers, or was started again (a node asks for runs only
        while it can run them)."""
        if self.pool is not None:
            return self.pool.ready()
        warm = self.warm_ray
        if warm is None or warm.alive():
            return True
        log.warning("this node's Ray stopped; starting it again")
        try:
            warm.stop()
            self.ray_address = warm.start()
        except Exception:
            log.exception("this node's Ray did not start again; asking for no runs meanwhile")
            return False
        return True

    def loop(self, poll_s: float = 1.0) -> None:
        """Ask and follow until stopped; an unreachable gateway leaves the runs as they
        are (a link that comes back loses nothing; the gateway decides what was lost)."""
        while not self.stopping.is_set():
            if not self.warm_ray_up():
                self.stopping.wait(poll_s)  # not ready: the gateway stops counting on it
                continue
            try:
                runs, poll_s = self.client.runs(
                    self.identity,
                    self.reports(),
                    single_node_only=self.single_node_only,
                    lost=self.lost_reports(),
                    pool=self.ray_address if self.pool is not None else None,
                    offers=self.offers,
                )
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


def _stop_started_head(starting: Future[HeadRecord]) -> None:
    """A head started for an attempt that is no longer this node's: stopped once up."""
    if starting.exception() is None:
        stop_head(starting.result())
