"""The dispatcher in a process of its own, as `make run`'s launcher runs it
(app/dispatcher_process.py starts it and starts it again if it dies):

    python -m compute.dispatch     # with the gateway's DISTLM_* settings

A round is Python work (placing the queue, reading the run inbox, pricing running jobs); in
a gateway worker it took the interpreter lock from that worker's requests (about a tenth of
a loaded gateway's time). Here it runs on a core of its own. It holds the same lease in the
database as any dispatcher, so a gateway dispatching in a worker beside it, or a second
launcher, never makes two leaders.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from compute.dispatch.agent_runs import AgentRunners
from compute.dispatch.dispatcher import Dispatcher
from core.db import make_engine, make_session_factory
from core.logging import configure_logging
from core.migrations import migration_lock, upgrade_to_head
from core.settings import get_settings

log = logging.getLogger("distlm.dispatcher")

PARENT_CHECK_S = 1.0  # how soon an orphaned dispatcher (its launcher killed) stops


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    # The launcher's workers migrate too; whoever comes first does it, the others find it done.
    with migration_lock(settings.database_url):
        upgrade_to_head(settings.database_url, locked=True)
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=2)
    factory = make_session_factory(engine)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    parent = os.getppid()
    threading.Thread(target=_stop_when_orphaned, args=(parent, stop), daemon=True).start()
    try:
        Dispatcher(factory, settings, AgentRunners(factory, settings)).run(stop)
    finally:
        engine.dispose()


def _stop_when_orphaned(parent: int, stop: threading.Event) -> None:
    """A launcher killed outright cannot stop its dispatcher: the dispatcher notices."""
    while not stop.wait(PARENT_CHECK_S):
        if os.getppid() != parent:
            log.warning("the launcher (pid %d) is gone: the dispatcher stops", parent)
            stop.set()


if __name__ == "__main__":
    main()
