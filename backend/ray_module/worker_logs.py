"""What a job's worker processes print and warn becomes the job's log, attributed to the
worker and its node.

Ray writes a worker actor's stdout and stderr to files on its own node, where the job's
owner never sees them (the driver runs with ``log_to_driver=False``: Ray's relay would mix
every job of a cluster into one stream). Each worker process instead tees its stdout and
stderr (lines still reach Ray's files), Python warnings and library log records at WARNING
and above into a buffer that a thread sends to the job's runner a tenth of a second after
they appear; the runner relays them with its other events, and waits ``FINAL_LINES_S``
before its final status so that a run's last lines come before it. Bounded: at most
``MAX_LINES`` lines per process and attempt, each cut at ``MAX_LINE_CHARS``, then one line
says how many were left out.

Installed by each mode's worker (``capture_worker_output(job_id, "es worker 2 on node 3")``):
a job-level ``runtime_env`` hook would do it for every process, but costs each new actor
about a second (see ``ray_module.cluster``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import time
from typing import Any, TextIO

from protocol.events import LogEvent
from ray_module.contract import NAMESPACE, runner_name

MAX_LINES = 200  # per worker process and attempt
MAX_LINE_CHARS = 2000
FLUSH_S = 1.0  # the longest a line waits while the runner cannot be reached
GATHER_S = 0.1  # after a line, how long to gather the lines printed with it
# How long a runner that has had worker output waits before its final status, so that lines
# printed just before a run ends are sent ahead of it (the gateway reads no further).
FINAL_LINES_S = GATHER_S + 0.4

_installed: _Sink | None = None
_install_lock = threading.Lock()


class _Sink:
    """Lines waiting to be sent to the runner, and the thread that sends them."""

    def __init__(self, job_id: int, source: str, send: Any = None) -> None:
        self.job_id = job_id
        self.source = source[:32]
        self._send = send  # tests: a function taking a list of LogEvents
        self._runner: Any = None
        self._pending: list[LogEvent] = []
        self._kept = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self._waiting = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-logs", daemon=True)
        self._thread.start()

    def add(self, text: str, level: str) -> None:
        text = text.rstrip()
        if not text:
            return
        with self._lock:
            if self._kept >= MAX_LINES:
                self._dropped += 1
                return
            self._kept += 1
            clipped = text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + "…"
            self._pending.append(LogEvent(clipped, level=level, source=self.source))
        self._waiting.set()

    def _loop(self) -> None:
        while True:
            # Soon after a line arrives (a short pause gathers the lines printed with it),
            # and at least every FLUSH_S while lines wait for a runner that is not there yet.
            self._waiting.wait(FLUSH_S)
            time.sleep(GATHER_S)
            self._waiting.clear()
            # The runner not there yet, or gone: the lines wait for the next try.
            with contextlib.suppress(Exception):
                self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
            if self._dropped:
                lines.append(
                    LogEvent(
                        f"{self._dropped} more lines of output were not kept "
                        f"(at most {MAX_LINES} per worker)",
                        level="warning",
                        source=self.source,
                    )
                )
                self._dropped = 0
        if not lines:
            return
        try:
            self._deliver(lines)
        except Exception:
            with self._lock:  # kept for the next try, ahead of newer lines
                self._pending = lines + self._pending
            raise

    def _deliver(self, lines: list[LogEvent]) -> None:
        if self._send is not None:
            self._send(lines)
            return
        if self._runner is None:
            import ray

            self._runner = ray.get_actor(runner_name(self.job_id), namespace=NAMESPACE)
        self._runner.emit_many.remote(lines)  # not waited on: a worker never blocks on logs


class _Tee(io.TextIOBase):
    """Writes go to the original stream and, line by line, to the sink."""

    def __init__(self, original: TextIO, sink: _Sink, level: str) -> None:
        self.original = original
        self.sink = sink
        self.level = level
        self._partial = ""

    def write(self, text: str) -> int:
        self.original.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.sink.add(line, self.level)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.original, "errors", None)

    @property
    def buffer(self) -> Any:
        """Bytes written here bypass the job's log (and reach Ray's file as before)."""
        return self.original.buffer

    def isatty(self) -> bool:
        return False


class _SinkHandler(logging.Handler):
    """Warnings (through ``logging.captureWarnings``) and library records at WARNING+; not
    Ray's own: Ray's handler already writes them to stderr, which is teed."""

    def __init__(self, sink: _Sink) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "ray" or record.name.startswith("ray."):
            return
        try:
            level = "error" if record.levelno >= logging.ERROR else "warning"
            self.sink.add(record.getMessage(), level)
        except Exception:  # a log line must never break the run
            pass


def capture_worker_output(job_id: int, source: str, send: Any = None) -> None:
    """Send this process's output to the job's log (once per process; a later call for
    another job, in a reused process, only renames the source)."""
    global _installed
    with _install_lock:
        if _installed is not None:
            _installed.job_id, _installed.source, _installed._runner = job_id, source[:32], None
            _installed._kept = 0
            return
        sink = _Sink(job_id, source, send)
        sys.stdout = _Tee(sys.stdout, sink, "info")
        sys.stderr = _Tee(sys.stderr, sink, "warning")
        logging.captureWarnings(True)
        logging.getLogger().addHandler(_SinkHandler(sink))
        _installed = sink
