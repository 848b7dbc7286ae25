"""The JobRunner: one detached, named Ray actor per job that runs the job's strategy and
buffers its events until the gateway's dispatcher collects them.

``JobRunner`` is a plain class (unit-testable without Ray); ``runner.client`` wraps it with
``ray.remote`` at the edge and is the dispatcher's whole interface to runners.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

from ray_module.contract import RunConfig
from ray_module.errors import RunCancelledError, describe, is_retryable
from ray_module.events import Event, RecordedEvent, RunState, StatusEvent
from ray_module.strategies.registry import get_strategy

log = logging.getLogger(__name__)

FINISHED = {
    "train": "training finished",
    "validate": "validation finished",
    "infer": "inference finished",
}


class JobRunner:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._events: list[RecordedEvent] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._state = RunState.CREATED

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
            self._finish(StatusEvent(RunState.FAILED, describe(error), retryable=retryable))
            return
        self._finish(StatusEvent(RunState.SUCCEEDED, FINISHED.get(self.config.task, "finished")))

    def _finish(self, status: StatusEvent) -> None:
        self._state = status.state
        self.emit(status)

    def emit(self, event: Event) -> int:
        """Buffer one event (workers call this through the actor handle); its number."""
        with self._lock:
            seq = len(self._events) + 1
            self._events.append(RecordedEvent(seq, time.time(), event))
            return seq

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
