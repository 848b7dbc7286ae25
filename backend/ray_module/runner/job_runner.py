"""The JobRunner: one named Ray actor per job attempt, owned by the job's driver on its
node, that runs the job's strategy and buffers its events until the driver relays them to
the gateway.

``JobRunner`` is a plain class (unit-testable without Ray); ``runner.client`` wraps it with
``ray.remote`` at the edge.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

from protocol.events import Event, LogEvent, RecordedEvent, RunState, StatusEvent
from protocol.run import RunConfig
from ray_module.errors import RunCancelledError, causes, describe, is_retryable
from ray_module.strategies.registry import get_strategy
from ray_module.worker_logs import FINAL_LINES_S

log = logging.getLogger(__name__)

FINISHED = {
    "train": "training finished",
    "validate": "validation finished",
    "infer": "inference finished",
    "audit": "audit finished",
}


class JobRunner:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._events: list[RecordedEvent] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._state = RunState.CREATED
        self._worker_output = False  # a worker has sent output lines (worker_logs)

    def start(self) -> RunState:
        """Start the strategy in a background thread (idempotent); return the state."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
        return self._state

    def _run(self) -> None:
        self._state = RunState.RUNNING
        self.emit(StatusEvent(RunState.RUNNING, f"attempt {self.config.attempt} started"))
        handler = _EventLogHandler(self)
        logging.getLogger("ray_module").addHandler(handler)
        try:
            self._run_strategy()
        finally:
            logging.getLogger("ray_module").removeHandler(handler)

    def _run_strategy(self) -> None:
        config = self.config
        self.emit(
            LogEvent(
                f"attempt {config.attempt}: {config.task} with strategy {config.strategy} on "
                f"node(s) {', '.join(str(w.node_id) for w in config.workers) or '-'}"
            )
        )
        try:
            get_strategy(self.config.strategy).run(self.config, self)
        except RunCancelledError:
            self._finish(StatusEvent(RunState.CANCELLED, "stopped on request"))
            return
        except Exception as error:  # a failed run is data for the dispatcher, not a crash
            if self._cancelled.is_set():  # workers stopped on request fail their group
                self._finish(StatusEvent(RunState.CANCELLED, "stopped on request"))
                return
            log.warning("job %s failed: %s", self.config.job_id, traceback.format_exc())
            retryable = is_retryable(error)
            self.emit(LogEvent(failure_story(error, retryable), level="error"))
            self._finish(StatusEvent(RunState.FAILED, describe(error), retryable=retryable))
            return
        self._finish(StatusEvent(RunState.SUCCEEDED, FINISHED.get(self.config.task, "finished")))

    def _finish(self, status: StatusEvent) -> None:
        if self._worker_output:
            time.sleep(FINAL_LINES_S)  # workers' last lines, still on their way
        self._state = status.state
        self.emit(status)

    def emit(self, event: Event) -> int:
        """Buffer one event (workers call this through the actor handle); its number."""
        with self._lock:
            seq = len(self._events) + 1
            self._events.append(RecordedEvent(seq, time.time(), event))
            return seq

    def emit_many(self, events: list[Event]) -> None:
        """Buffer several events at once (a worker's output lines, ``worker_logs``)."""
        self._worker_output = True
        self.emit_all(events)

    def emit_all(self, events: list[Event]) -> None:
        """Buffer a worker's own events at once, in order (one call for several: split's
        trainer sends its steps' events this way)."""
        for event in events:
            self.emit(event)

    def events(self, after: int = 0) -> list[RecordedEvent]:
        with self._lock:
            return self._events[after:]

    def state(self) -> RunState:
        return self._state

    def cancel(self) -> None:
        self._cancelled.set()

    def cancel_requested(self) -> bool:
        """Asked by workers that run outside the runner's thread (Ray Train's)."""
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise RunCancelledError()


def failure_story(error: BaseException, retryable: bool) -> str:
    """Why the run failed, for the job's log: the cause and its chain, one line each, and
    what happens next."""
    seen: list[str] = []
    for cause in causes(error):
        text = str(cause).strip()
        line = f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"
        if line not in seen and not line.startswith(("RayTaskError", "RayActorError:")):
            seen.append(line[:500])
    what_next = (
        "the work was lost with a worker or node: the job resumes from its last checkpoint"
        if retryable
        else "retrying cannot help: fix the job's spec (data, model or settings) and submit again"
    )
    return "failed: " + " <- ".join(seen[:5] or [describe(error)]) + f"; {what_next}"


class _EventLogHandler(logging.Handler):
    """Warnings and errors that our code logs in the runner's process become job log lines
    (a runner owns its process, so they are this job's)."""

    def __init__(self, runner: JobRunner) -> None:
        super().__init__(level=logging.WARNING)
        self.runner = runner

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == __name__:
            return  # the runner's own traceback: the failure story says it in words
        try:
            level = "error" if record.levelno >= logging.ERROR else "warning"
            self.runner.emit(LogEvent(record.getMessage()[:2000], level=level, source="runner"))
        except Exception:  # a log line must never break the run
            pass
