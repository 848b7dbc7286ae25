"""`make run`: serve the gateway on DISTLM_HOST:DISTLM_PORT (lifespan does the rest), the
dispatcher in a process of its own and, where jobs run on the nodes' own Ray, this machine's
node agent beside them."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import uvicorn

from app.dispatcher_process import DispatcherProcess
from app.json_body import SERVER_MAX_HEADER_BYTES
from app.local_agent import LocalAgent
from core.settings import Settings, get_settings


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the gateway (the tests serve their app with the same ones)."""
    return dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Worker processes share the database (and the dispatcher, in its own process).
        workers=settings.workers,
        # h11 answers a header block over 16 KB with a plain-text 400 before the app sees it;
        # let it through so the app refuses it in the one JSON error shape (431).
        h11_max_incomplete_event_size=SERVER_MAX_HEADER_BYTES,
        # X-Forwarded-For only from the proxies named (uvicorn trusts 127.0.0.1 by default,
        # which let anyone on the machine rotate the address the login throttle counts).
        proxy_headers=bool(settings.trusted_proxies.strip()),
        forwarded_allow_ips=settings.trusted_proxies.strip() or None,
    )


def main() -> None:
    settings = get_settings()
    dispatcher = None
    if settings.dispatch_in_gateway:
        # The dispatcher gets a process (a core) of its own; the workers serve requests only.
        os.environ["DISTLM_DISPATCH_IN_GATEWAY"] = "false"
        get_settings.cache_clear()  # a single worker serves in this very process
        dispatcher = DispatcherProcess()
    share_prometheus_figures()  # the workers' and the dispatcher's figures, on any worker
    if dispatcher is not None:
        dispatcher.start()
    agent = None
    if settings.local_node:
        # This machine lends itself as any node does: through an agent of its own.
        agent = LocalAgent(settings)
        if agent.prepare():
            agent.start_when_ready()
        else:
            agent = None
    try:
        uvicorn.run("app.main:app", **server_options(settings))
    finally:
        if agent is not None:
            agent.stop()
        if dispatcher is not None:
            dispatcher.stop()


def share_prometheus_figures() -> None:
    """Several processes (the dispatcher's, one or more workers): prometheus-client's
    multiprocess mode, so GET /metrics on any worker counts the requests and rounds of all.
    A fresh directory each start (stale files would add a previous run's counts); set
    before the workers and the dispatcher start, which inherit it."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="distlm-prometheus-")


if __name__ == "__main__":
    main()
