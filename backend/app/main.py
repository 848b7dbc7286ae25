"""create_app() and its lifespan: migrate, bootstrap the admin, dispatch, serve.

``app`` below lets ``cd backend && uvicorn app.main:app [--workers N]`` (seed 003) work:
worker processes share the database, and one of them at a time dispatches (a lease in the
database); `make run` dispatches in a process of its own instead (app/dispatcher_process.py).
No gateway process starts, joins or imports Ray: jobs run on the nodes' agents.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api_docs import install_api_docs
from app.dashboard.pages import install_dashboard
from app.errors import install_error_handlers
from app.json_body import RequestLimitsMiddleware
from app.openapi import document_error_responses
from app.request_metrics import RequestMetricsMiddleware
from app.responses import JSONLineResponse
from app.routes import (
    auth,
    health,
    job_stream,
    jobs,
    metrics,
    nodes,
    prometheus,
    runs,
    status,
    tokens,
    users,
)
from app.stream_slots import StreamSlots
from app.tcp_nodelay import enable_tcp_nodelay
from auth.passwords import password_context
from compute.accounts.service import ensure_bootstrap_admin, signup_grant_micro
from compute.billing.service import rates_from
from compute.dispatch.agent_runs import AgentRunners
from compute.dispatch.dispatcher import RunnerPort, start_dispatcher
from core.db import (
    get_engine,
    make_engine,
    make_session_factory,
    read_only_factory,
    session_scope,
)
from core.logging import configure_logging
from core.migrations import migration_lock, upgrade_to_head
from core.settings import Settings, get_settings

enable_tcp_nodelay()  # uvicorn --workers N would leave Nagle on (see app/tcp_nodelay.py)

VERSION = "0.1.0"
log = logging.getLogger(__name__)

DESCRIPTION = """
DistLM pools GPU and CPU machines lent by **node owners**; **users** spend tokens to train
models on them. Use **Authorize** with your username and password (OAuth2 password flow) to
try the endpoints here.

**Trust.** The gateway is a control plane: no node can run code on it. A job runs on the
nodes it is placed on, in a Ray cluster of its own (one node: that node's own Ray); the nodes
of one multi-node job can run code on each other for that job's life, and nothing else.
"""


def create_app(
    settings: Settings | None = None,
    *,
    dispatch: bool = True,
    run_migrations: bool = True,
    runners: RunnerPort | None = None,
) -> FastAPI:
    """The gateway. ``dispatch`` runs the dispatcher, with the nodes' agents running the
    jobs (or ``runners``, a stand-in tests give it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        configure_logging(resolved.log_level)
        engine = get_engine(resolved.database_url)
        app.state.settings = resolved
        app.state.rates = rates_from(resolved)
        app.state.engine = engine
        app.state.session_factory = make_session_factory(engine)
        app.state.read_session_factory = read_only_factory(app.state.session_factory)
        # Several gateway processes may start at once: one at a time migrates, creates the
        # bootstrap admin; the others find them done.
        with migration_lock(resolved.database_url):
            if run_migrations:
                upgrade_to_head(resolved.database_url, locked=True)
            with session_scope(app.state.session_factory) as session:
                ensure_bootstrap_admin(
                    session,
                    password_context(resolved.argon2_time_cost, resolved.argon2_memory_kib),
                    username=resolved.admin_username,
                    password=resolved.admin_password,
                    signup_grant=signup_grant_micro(resolved.signup_grant),
                )
        app.state.stream_slots = StreamSlots(
            per_user=resolved.max_streams_per_user, total=resolved.max_streams
        )
        stop_dispatcher, dispatcher_engine = None, None
        if dispatch and resolved.dispatch_in_gateway:
            # The dispatcher's connections are its own: its lease renewal and job writes
            # never wait behind request traffic for a pooled connection.
            dispatcher_engine = make_engine(resolved.database_url, pool_size=2, max_overflow=2)
            factory = make_session_factory(dispatcher_engine)
            port = runners or AgentRunners(factory, resolved)
            stop_dispatcher = start_dispatcher(factory, resolved, port)
        try:
            yield
        finally:
            if stop_dispatcher is not None:
                stop_dispatcher()
            if dispatcher_engine is not None:
                dispatcher_engine.dispose()

    app = FastAPI(
        title="DistLM",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served on local assets by app.api_docs
        redoc_url=None,
        default_response_class=JSONLineResponse,
    )
    app.state.dispatch = dispatch
    app.state.version = VERSION
    install_error_handlers(app)
    app.add_middleware(RequestLimitsMiddleware)
    app.add_middleware(RequestMetricsMiddleware)
    for module in (
        health, auth, users, nodes, jobs, job_stream, runs, tokens, metrics, prometheus, status
    ):  # fmt: skip
        document_error_responses(module.router)
        app.include_router(module.router)
    install_dashboard(app)
    install_api_docs(app)
    return app


app = create_app()
