"""The dispatcher in a process of its own (`python -m compute.dispatch`): `make run`'s
launcher starts it beside the gateway's workers, which then serve requests only, and starts
it again if it dies. Nothing here imports the dispatcher: the launcher's own process may
serve as the one worker, and prometheus-client must not be imported before its
multiprocess mode is set."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time

log = logging.getLogger("distlm.launcher")

RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after successive quick deaths
HEALTHY_AFTER_S = 60.0  # a run this long resets the restart delay


class DispatcherProcess:
    """The launcher's side: start the dispatcher, start it again when it dies (waiting
    longer after each quick death), stop it with the launcher."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._keep_running, name="dispatcher-process", daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self.lock:
            if self.stopping.is_set():
                return None
            # Its own session: a Ctrl-C meant for the launcher stops it through stop(), not
            # at the same moment (it would be started again before the launcher knew).
            self.process = subprocess.Popen(
                [sys.executable, "-m", "compute.dispatch"], start_new_session=True
            )
            return self.process

    def _keep_running(self) -> None:
        deaths = 0
        while (process := self._spawn()) is not None:
            started = time.monotonic()
            code = process.wait()
            if self.stopping.is_set():
                return
            deaths = 0 if time.monotonic() - started > HEALTHY_AFTER_S else deaths + 1
            delay = RESTART_DELAYS_S[min(deaths, len(RESTART_DELAYS_S)) - 1] if deaths else 0.0
            log.error("the dispatcher process exited (%s); starting it again in %.0f s",
                      code, delay)  # fmt: skip
            if self.stopping.wait(delay):
                return

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # it resigns the lease, so another process need not wait it out
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
