"""The keeper of a node's warm workers, and the warm worker itself.

Ray binds a worker process to one job, and an actor's process exits with the actor: no
process outlives the job that used it, so "warm" cannot mean reused. Instead the keeper (a
detached actor on the node's machine, named ``keeper_name(node_id)``) keeps ``size`` detached
actors alive that have done the heavy imports and hold nothing of any job. A job's runner
takes some (``take``); each then becomes one of the job's actors (``WarmWorker.become``) and
serves that job only: the keeper never hands a worker out twice, and kills a taken worker
once the process that took it has gone (the runner, or a benchmark's driver), then starts a
fresh one in its place. At most ``size`` warm or taken workers exist at any time. Each
worker also watches on its own, for a keeper that died (out of memory, killed): a taken one
ends when its taker has gone, an idle one when its keeper has. Processes are named by pid and
start time, so a pid given to a later process is not mistaken for the one watched.

Warm workers reserve no CPU in Ray (``num_cpus=0``): the dispatcher, not Ray, decides what
runs on a node, and an idle warm worker must not keep a job's actor from being placed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.nodes import node_resource

log = logging.getLogger("distlm.warm")

KEEPER_NAME = "distlm-warm-workers"
HEAVY_MODULES = ("numpy", "torch")  # what every mode's worker imports first
WATCH_S = 0.5  # how often the keeper looks for takers that have gone
SELF_WATCH_S = 2.0  # how often a taken worker looks for its taker itself (the backstop)
MAX_REFILL_PAUSE_S = 60.0  # after workers that died starting (no memory, a broken install)
LOWEST_PRIORITY = 19  # nice


def keeper_name(node_id: int) -> str:
    """The keeper's name in Ray: one per node (a trusted pool's Ray holds several)."""
    return f"{KEEPER_NAME}-{node_id}"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command's name (the state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot): with the pid, it names one
    process even after the pid has been given to another."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # stat's field 22


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs (and, given ``started``, is still the one that started
    then, not a later process that was given its pid). One that has ended but was not yet
    reaped by its parent (a zombie) has gone too."""
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started


def threads_env_at_start() -> bool:
    """Whether the machine's operator set OMP_NUM_THREADS for the node's Ray (Ray sets it
    for an actor only when unset; the process's start environment says which it was)."""
    try:
        environ = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(entry.startswith(b"OMP_NUM_THREADS=") for entry in environ)


class WarmWorker:
    """A process with the heavy imports done, waiting to become one job's actor.

    The imports run in a thread at the lowest priority (Linux sets nice per thread): a pool
    filling up after a job never slows the node's next job, which takes only workers whose
    imports are done (``ready``), so none waits on that thread."""

    def __init__(self, keeper_pid: int = 0) -> None:
        self._imported = threading.Event()
        self._target: Any = None
        self._import_error: Exception | None = None
        self._taken = False
        threading.Thread(target=self._import_heavy_modules, daemon=True).start()
        if keeper_pid:
            watched = (keeper_pid, process_start(keeper_pid))
            threading.Thread(target=self._end_idle_without, args=watched, daemon=True).start()

    def _import_heavy_modules(self) -> None:
        with contextlib.suppress(OSError):  # not Linux: imported at the normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
        try:
            for name in HEAVY_MODULES:
                importlib.import_module(name)
        except Exception as error:  # a broken install: the keeper hears of it from ready()
            self._import_error = error
        self._imported.set()

    def ready(self) -> int:
        """Its pid, once the imports are done."""
        self._imported.wait()
        if self._import_error is not None:
            raise self._import_error
        return os.getpid()

    def become(
        self, cls: type, cpu_cores: float, args: tuple, kwargs: dict, taker_pid: int = 0
    ) -> None:
        """Build the job's actor object here, as Ray would have built it in a fresh
        process of ``cpu_cores`` CPUs (its thread count from them). Once only. With
        ``taker_pid`` it also ends itself when that process has gone: the keeper does so
        first, but a keeper that died (out of memory, killed) would leave it serving no one."""
        if self._taken:
            raise RuntimeError("this warm worker already serves a job")
        self._taken = True
        if taker_pid:
            watched = (taker_pid, process_start(taker_pid))
            threading.Thread(target=self._end_with, args=watched, daemon=True).start()
        if not threads_env_at_start():
            os.environ["OMP_NUM_THREADS"] = str(max(math.floor(cpu_cores), 1))
        try:
            self._target = cls(*args, **kwargs)
        except Exception:
            # As a fresh actor whose constructor raised: its error in the worker's log, the
            # actor gone, every later call a RayActorError (retryable, as for a fresh one).
            traceback.print_exc()
            import ray

            ray.actor.exit_actor()

    @staticmethod
    def _end_with(taker_pid: int, started: int | None) -> None:
        while pid_alive(taker_pid, started):
            time.sleep(SELF_WATCH_S)
        os._exit(0)  # as the keeper's kill would: the process, and the job's object, gone

    def _end_idle_without(self, keeper_pid: int, started: int | None) -> None:
        """An idle worker whose keeper has gone ends itself: nothing would hand it out, and
        a keeper started again fills a pool of its own (each worker holds torch's memory).
        A taken one serves its taker until that has gone (``_end_with``)."""
        while pid_alive(keeper_pid, started):
            time.sleep(SELF_WATCH_S)
        if not self._taken:
            os._exit(0)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        if self._target is None:
            raise RuntimeError("this warm worker was not given a job")
        return getattr(self._target, method)(*args, **kwargs)


@dataclass(eq=False)
class _Worker:
    handle: Any
    ready_ref: Any
    pid: int | None = None
    taker: int | None = None  # the pid of the process that took it
    taker_started: int | None = None  # and when that process started (pids are reused)


class WarmPoolKeeper:
    """Keeps ``size`` warm workers on node ``node_id`` and hands each out once."""

    def __init__(self, size: int, node_id: int) -> None:
        self.size = size
        self.node_id = node_id
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._stopped = False
        self._refill_pause_s = 0.0  # doubles while new workers die starting
        self._refill_after = 0.0  # monotonic time
        with self._lock:
            self._fill()
        threading.Thread(target=self._watch, daemon=True).start()

    def take(
        self, count: int, node_id: int, taker_pid: int, taker_started: int | None = None
    ) -> list[Any]:
        """Up to ``count`` idle, ready workers for the process ``taker_pid`` on this node;
        fewer, or none, when the pool has fewer or serves another node (the job starts
        fresh actors for the rest: one still importing would only make it wait). None for a
        taker that this machine does not see as the process that started at
        ``taker_started`` (its start time as the taker read it): one on another machine of a
        trusted pool, whose end the workers could not watch."""
        started = process_start(taker_pid)
        if node_id != self.node_id or count <= 0 or started is None:
            return []
        if taker_started is not None and started != taker_started:
            return []
        with self._lock:
            self._learn_pids()
            ready = [w for w in self._workers if w.taker is None and w.pid and pid_alive(w.pid)]
            handed = ready[:count]
            for worker in handed:
                worker.taker, worker.taker_started = taker_pid, started
        return [worker.handle for worker in handed]

    def state(self) -> dict[str, int]:
        """How many workers are idle, idle and ready (imports done), and taken."""
        with self._lock:
            self._learn_pids()
            idle = [w for w in self._workers if w.taker is None]
            return {
                "size": self.size,
                "idle": len(idle),
                "ready": sum(1 for w in idle if w.pid is not None),
                "taken": len(self._workers) - len(idle),
            }

    def stop(self) -> None:
        """Kill every worker, idle or taken, and keep none."""
        import ray

        with self._lock:
            self._stopped = True
            workers, self._workers = self._workers, []
        for worker in workers:
            ray.kill(worker.handle, no_restart=True)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_S)
            try:
                self._look_once()
            except Exception:  # a Ray hiccup: the next look tries again
                log.exception("the keeper of the warm workers could not look at them")

    def _look_once(self) -> None:
        import ray

        with self._lock:
            self._learn_pids()
            ended = [w for w in self._workers if self._ended(w)]
            self._workers = [w for w in self._workers if w not in ended]
            if any(w.pid == 0 for w in ended):  # died starting: wait longer each time
                self._refill_pause_s = min(max(2 * self._refill_pause_s, 1.0), MAX_REFILL_PAUSE_S)
                self._refill_after = time.monotonic() + self._refill_pause_s
            elif any(w.pid for w in self._workers):
                self._refill_pause_s = 0.0
            if time.monotonic() >= self._refill_after:
                self._fill()
        for worker in ended:  # a taken worker serves its taker only, never another
            ray.kill(worker.handle, no_restart=True)

    def _ended(self, worker: _Worker) -> bool:
        if worker.pid is not None and (worker.pid == 0 or not pid_alive(worker.pid)):
            return True
        return worker.taker is not None and not pid_alive(worker.taker, worker.taker_started)

    def _learn_pids(self) -> None:
        import ray

        pending = [w for w in self._workers if w.pid is None]
        if not pending:
            return
        done, _ = ray.wait([w.ready_ref for w in pending], num_returns=len(pending), timeout=0)
        for worker in pending:
            if worker.ready_ref in done:
                try:
                    worker.pid = ray.get(worker.ready_ref)
                except ray.exceptions.RayError:
                    worker.pid = 0  # died while starting (no process has pid 0)

    def _fill(self) -> None:
        import ray

        actor = ray.remote(WarmWorker)
        while not self._stopped and len(self._workers) < self.size:
            handle = actor.options(
                num_cpus=0,
                resources={node_resource(self.node_id): 0.001},
                lifetime="detached",  # outlives the short-lived process that made the keeper
                max_restarts=0,
            ).remote(os.getpid())
            self._workers.append(_Worker(handle, handle.ready.remote()))
