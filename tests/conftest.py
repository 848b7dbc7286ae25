"""Shared fixtures: a migrated database per backend (SQLite always, PostgreSQL when
TEST_DATABASE_URL is set), an app bound to it, and headers for each role."""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.main import create_app
from auth.models import Role, User
from auth.passwords import password_context
from auth.tokens import create_access_token
from compute.accounts.service import register_user, signup_grant_micro
from core.db import Base, get_engine, make_session_factory
from core.migrations import upgrade_to_head
from core.settings import Settings, normalise_database_url
from tests.agent_pool import AgentPool, two_machine_cluster
from tests.live_gateway import LiveGateway
from tests.polling import wait_for

# The suite plays several machines on the host's few cores: one compute thread per worker
# (ray_module.threads caps a worker's torch threads by it), or every worker's threads fight
# over the same cores. The tiny GPT-2 learning run took twice as long without it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

BACKEND = Path(__file__).resolve().parent.parent / "backend"
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
PASSWORD = "correct-horse-battery"
ADMIN_PASSWORD = "admin-password-for-tests"


def pg_database(url: str, name: str) -> str:
    """A URL for a sibling database on the same PostgreSQL server, created if missing."""
    base = make_url(url)
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


@functools.cache
def postgres_url() -> str | None:
    """TEST_DATABASE_URL; under pytest-xdist, a database of each test process's own beside
    it (created if missing), since every test empties the tables it used."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        return None
    url = normalise_database_url(url)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return pg_database(url, f"{make_url(url).database}_{worker}") if worker else url


def per_process(name: str) -> str:
    """``name`` made the current test process's own (under pytest-xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{name}_{worker}" if worker else name


def backends() -> list[pytest.param]:
    params = [pytest.param("sqlite", id="sqlite")]
    params.append(
        pytest.param(
            "postgresql",
            id="postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not postgres_url(), reason="TEST_DATABASE_URL not set"),
            ],
        )
    )
    return params


def drop_everything(url: str) -> None:
    """Empty a PostgreSQL test database (tables left by an earlier, interrupted run)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        metadata = MetaData()
        metadata.reflect(connection)
        metadata.drop_all(connection)
    engine.dispose()


@pytest.fixture(scope="session", params=backends())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'distlm-test.db'}"
    else:
        url = postgres_url()
        assert url is not None
        drop_everything(url)
    upgrade_to_head(url)
    return url


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        database_url=database_url,
        secret_key=TEST_SECRET,
        admin_username="admin",
        admin_password=ADMIN_PASSWORD,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        node_timeout=60,
        login_max_failures=5,
        login_lockout_s=300,
        # Per-user submit limits have their own tests; others submit freely.
        max_waiting_jobs_per_user=0,
        submits_per_minute=0,
        # Audits of split trainers have their own tests (tests/compute/test_trainer_audits.py,
        # the hosts' trainer cheater); elsewhere they would queue jobs beside each test's.
        audit_trainers=False,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


def clear_tables(url: str) -> None:
    engine = get_engine(url)
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
        if connection.dialect.name == "postgresql":
            # Fresh ids per test, so "unknown id" cases are predictable.
            for table in Base.metadata.sorted_tables:
                if "id" in table.c:
                    connection.execute(
                        text(f"ALTER SEQUENCE IF EXISTS {table.name}_id_seq RESTART WITH 1")
                    )


@pytest.fixture
def app(settings: Settings) -> Iterator[object]:
    clear_tables(settings.database_url)
    yield create_app(settings, dispatch=False, run_migrations=False)
    clear_tables(settings.database_url)


@pytest.fixture
def client(app: object) -> Iterator[TestClient]:
    with TestClient(app) as test_client:  # type: ignore[arg-type]
        yield test_client


@pytest.fixture
def db(client: TestClient, settings: Settings) -> Iterator[Session]:
    """A session for tests to inspect or poke the database behind the API.

    A plain engine (pysqlite's deferred transactions) so a test's reads never hold the
    write lock that the gateway's BEGIN IMMEDIATE sessions wait for.
    """
    engine = create_engine(settings.database_url)
    session = Session(engine, expire_on_commit=False)
    yield session
    session.rollback()
    session.close()
    engine.dispose()


@dataclass
class Account:
    user: User
    headers: dict[str, str]
    password: str = PASSWORD

    @property
    def id(self) -> int:
        return self.user.id


def bearer(user: User, settings: Settings, *, expires_in: dt.timedelta | None = None) -> dict:
    token = create_access_token(
        user_id=user.id,
        role=user.role,
        secret_key=settings.secret_key,
        expires_in=expires_in or dt.timedelta(minutes=30),
    )
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def make_account(client: TestClient, settings: Settings):
    factory = make_session_factory(client.app.state.engine)  # type: ignore[attr-defined]
    context = password_context(settings.argon2_time_cost, settings.argon2_memory_kib)

    def make(username: str, role: Role = Role.USER) -> Account:
        with factory() as session:
            user = register_user(
                session,
                context,
                username=username,
                password=PASSWORD,
                role=role,
                signup_grant=signup_grant_micro(settings.signup_grant),
            )
            session.commit()
            session.refresh(user)
            session.expunge(user)
        return Account(user=user, headers=bearer(user, settings))

    return make


@pytest.fixture
def admin(client: TestClient, settings: Settings) -> Account:
    """The bootstrap admin the lifespan created."""
    factory = make_session_factory(client.app.state.engine)  # type: ignore[attr-defined]
    with factory() as session:
        user = session.query(User).filter_by(username="admin").one()
        session.expunge(user)
    return Account(user=user, headers=bearer(user, settings), password=ADMIN_PASSWORD)


@pytest.fixture
def user(make_account) -> Account:
    return make_account("alice", Role.USER)


@pytest.fixture
def other_user(make_account) -> Account:
    return make_account("bob", Role.USER)


@pytest.fixture
def node_owner(make_account) -> Account:
    return make_account("olivia", Role.NODE_OWNER)


@pytest.fixture
def other_node_owner(make_account) -> Account:
    return make_account("oscar", Role.NODE_OWNER)


@pytest.fixture
def admin_headers(admin: Account) -> dict[str, str]:
    return admin.headers


@pytest.fixture
def user_headers(user: Account) -> dict[str, str]:
    return user.headers


@pytest.fixture
def node_owner_headers(node_owner: Account) -> dict[str, str]:
    return node_owner.headers


SEED_JOB = {
    "model_config": {"type": "simple_transformer", "model_name": "gpt2"},
    "data_config": {"data_source": "huggingface", "dataset_name": "wikitext"},
    "requirements": {"gpu": 1, "cpu_cores": 4, "memory": 16},
}

SEED_NODE = {"hostname": "gpu-node-1", "resources": {"gpu": 1, "cpu_cores": 8, "memory": 32}}


def register_node(
    client: TestClient,
    headers: dict[str, str],
    hostname: str = "gpu-node-1",
    resources: dict | None = None,
) -> dict:
    body = {**SEED_NODE, "hostname": hostname, "resources": resources or SEED_NODE["resources"]}
    response = client.post("/nodes/register", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def submit_job(client: TestClient, headers: dict[str, str], **overrides: object) -> dict:
    response = client.post("/jobs/submit", headers=headers, json={**SEED_JOB, **overrides})
    assert response.status_code == 201, response.text
    return response.json()


# --- Ray -------------------------------------------------------------------------------------
# One multi-node Ray cluster per test session, on this machine: a head with no CPUs (so work
# lands only where a DistLM node's custom resource is) and worker nodes that stand for the
# machines of node owners. Node i carries `distlm_node_<i>`; tests register nodes in the same
# order so database ids match.


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # The pool's workers run our strategies: the code root on their path (a pool's own
    # `ray start` has it the same way).
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(BACKEND), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    # The engine's own tests drive runners from this process; jobs through the gateway run
    # in drivers of their own, as on the nodes.
    cluster, nodes = two_machine_cluster(free_port())
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CPU_NODE = {"gpu": 0, "cpu_cores": 2, "memory": 4}  # what each Ray test node offers


@pytest.fixture
def ray_settings(request: pytest.FixtureRequest, ray_cluster, database_url: str, tmp_path):
    # Ray tests take minutes: those whose promise involves the database run on both.
    if not database_url.startswith("sqlite") and not request.node.get_closest_marker("database"):
        pytest.skip("Ray test not marked 'database': runs once, on SQLite")
    return make_settings(
        database_url,
        storage_path=tmp_path / "storage",
        dispatch_interval_s=0.3,
        # A node whose agent falls silent is lost within seconds, not a minute.
        node_timeout=5,
        node_heartbeat_interval=1,
    )


@pytest.fixture
def ray_client(ray_settings) -> Iterator[LiveGateway]:
    """The gateway, served on a port of its own: jobs run on its nodes' agents."""
    clear_tables(ray_settings.database_url)
    gateway = LiveGateway(
        lambda: create_app(ray_settings, dispatch=True, run_migrations=False), free_port()
    ).start()
    yield gateway
    gateway.stop()
    clear_tables(ray_settings.database_url)


@pytest.fixture
def agent_pool(ray_client: LiveGateway, ray_cluster, tmp_path) -> Iterator[AgentPool]:
    """The agents of the nodes a test registers (``agent_pool.start``), on the session's
    Ray cluster as a trusted pool; the Ray nodes a test lost come back afterwards."""
    cluster, ray_nodes = ray_cluster
    settings = ray_client.app.state.settings
    pool = AgentPool(
        str(ray_client.base_url), cluster, ray_nodes, tmp_path / "nodes", str(settings.data_root)
    )
    yield pool
    pool.stop()


def start_node(
    client: httpx.Client,
    pool: AgentPool,
    headers: dict[str, str],
    hostname: str,
    resources: dict | None = None,
) -> int:
    """Register a node and start its agent in the pool; its id."""
    node = register_node(client, headers, hostname, resources or CPU_NODE)
    pool.start(node["id"], node["credential"])
    return node["id"]


def job_state(client: TestClient, headers: dict, job_id: int) -> dict:
    return client.get(f"/jobs/{job_id}", headers=headers).json()


def finished(client: TestClient, headers: dict, job_id: int) -> dict | None:
    job = job_state(client, headers, job_id)
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def wait_until_finished(
    client: TestClient, headers: dict, job_id: int, *, timeout_s: float = 240
) -> dict:
    """The job once it has ended (succeeded, failed or cancelled): the one way a test waits
    for a job; on timeout the failure shows the job as it last was."""
    return wait_for(
        lambda: finished(client, headers, job_id),
        timeout_s=timeout_s,
        what=lambda: job_state(client, headers, job_id),
    )


def submit_and_wait(
    client: TestClient, headers: dict, body: dict, *, timeout_s: float = 240
) -> dict:
    """Submit ``body`` (it must be accepted) and wait for the job to end."""
    response = client.post("/jobs/submit", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return wait_until_finished(client, headers, response.json()["id"], timeout_s=timeout_s)


@pytest.fixture
def two_nodes(
    ray_client: LiveGateway, agent_pool: AgentPool, make_account
) -> tuple[Account, list[int]]:
    owner = make_account("olivia", Role.NODE_OWNER)
    nodes = [start_node(ray_client, agent_pool, owner.headers, f"m{i}") for i in (1, 2)]
    wait_for(
        lambda: all(
            ray_client.get(f"/nodes/{n}", headers=owner.headers).json()["status"] == "online"
            for n in nodes
        ),
        what="nodes online",
    )
    return owner, nodes
