"""create_app() and its lifespan: migrate, bootstrap the admin, connect Ray, serve.

``app`` below lets ``cd backend && uvicorn app.main:app [--workers N]`` (seed 003) work:
worker processes share the database and the local Ray head, and one of them at a time
dispatches (a lease in the database).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

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
from app.tcp_nodelay import enable_tcp_nodelay
from auth.passwords import password_context
from compute.accounts import ensure_bootstrap_admin, signup_grant_micro
from compute.agent_runs import AgentRunners
from compute.cluster_access import ClusterAccess
from compute.dispatcher import RayPort, start_dispatcher
from compute.local_node import detect_local_resources, register_local_node
from compute.nodes import NODE_LABEL, RAY_RESOURCE_UNITS, node_resource_name
from core.db import get_engine, make_session_factory, read_only_factory, session_scope
from core.logging import configure_logging
from core.migrations import migration_lock, upgrade_to_head
from core.settings import Settings, get_settings
from ray_module.cluster import ClusterConfig

enable_tcp_nodelay()  # uvicorn --workers N would leave Nagle on (see app/tcp_nodelay.py)

VERSION = "0.1.0"
log = logging.getLogger(__name__)

DESCRIPTION = """
DistLM pools GPU and CPU machines lent by **node owners** into one Ray cluster; **users**
spend tokens to train models on it. Use **Authorize** with your username and password
(OAuth2 password flow) to try the endpoints here.

**Trust.** An approved node joins the Ray cluster, and Ray trusts every member: code on an
approved node can run on every other node, the gateway's machine included. Approve only
machines you would give a shell on the gateway. A ban refuses the node's heartbeats and
joins and restarts the gateway's own Ray with a new token that the node never gets.
"""


def cluster_config(settings: Settings, session_factory: sessionmaker[Session]) -> ClusterConfig:
    """Join RAY_ADDRESS, or start a local Ray that is also a node of the bootstrap admin."""
    if settings.ray_address:
        return ClusterConfig(address=settings.ray_address)
    resources = detect_local_resources(settings.ray_num_cpus)
    with session_scope(session_factory) as session:
        node = register_local_node(session, settings.admin_username, resources)
        node_id = node.id if node is not None else None
    if node_id is None:
        return ClusterConfig(num_cpus=resources.cpus, object_store_mb=settings.ray_object_store_mb)
    return ClusterConfig(
        num_cpus=resources.cpus,
        num_gpus=resources.gpus,
        object_store_mb=settings.ray_object_store_mb,
        resources={node_resource_name(node_id): RAY_RESOURCE_UNITS},
        labels={NODE_LABEL: str(node_id)},
    )


def create_app(
    settings: Settings | None = None,
    *,
    manage_ray: bool = True,
    run_migrations: bool = True,
    dispatcher_ray: RayPort | None = None,
) -> FastAPI:
    """The gateway. ``manage_ray`` connects Ray and runs the dispatcher; tests without Ray
    may run the dispatcher against a stand-in for Ray (``dispatcher_ray``) instead."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        configure_logging(resolved.log_level)
        engine = get_engine(resolved.database_url)
        app.state.settings = resolved
        app.state.engine = engine
        app.state.session_factory = make_session_factory(engine)
        app.state.read_session_factory = read_only_factory(app.state.session_factory)
        # Several gateway processes may start at once: one at a time migrates, creates the
        # bootstrap admin and registers the local node; the others find them done.
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
            gateway_ray = manage_ray and resolved.run_jobs_on == "gateway"
            config = cluster_config(resolved, app.state.session_factory) if gateway_ray else None
        app.state.cluster = ClusterAccess()
        stop_dispatcher = None
        if manage_ray and not gateway_ray:
            # The nodes' agents run the jobs; this process never starts or joins a Ray.
            runners = AgentRunners(app.state.session_factory, resolved)
            stop_dispatcher = start_dispatcher(app.state.session_factory, resolved, ray=runners)
        elif manage_ray:
            cluster = ClusterAccess(config, head_dir=resolved.storage_path / "ray-head")
            cluster.start()
            app.state.cluster = cluster
            stop_dispatcher = start_dispatcher(app.state.session_factory, resolved, cluster)
        elif dispatcher_ray is not None:
            stop_dispatcher = start_dispatcher(
                app.state.session_factory, resolved, ray=dispatcher_ray
            )
        try:
            yield
        finally:
            if stop_dispatcher is not None:
                stop_dispatcher()
            app.state.cluster.stop()

    app = FastAPI(
        title="DistLM",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
        default_response_class=JSONLineResponse,
    )
    app.state.manage_ray = manage_ray
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
    return app


app = create_app()
