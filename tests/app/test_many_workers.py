"""The gateway as 4 real uvicorn worker processes (issue 12): `make run` with
DISTLM_WORKERS=4 on a fresh SQLite file, and seed 003's `uvicorn app.main:app --workers 4`
on a fresh PostgreSQL database (with this machine lent by a `distlm-node` of its own, as
plain uvicorn lends nothing). The workers race on start-up (migrations, bootstrap admin)
and must all come up; more than one of them serves requests (each process's own Prometheus
file), counted by all; exactly one Ray head (the node's) serves them; two
small jobs each run once, are charged and settled once; then the dispatching process is
killed and a job submitted afterwards still runs."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text

from tests.agent.gateway_process import PYTHON, ROOT, free_port, login
from tests.conftest import postgres_url
from tests.leases import dispatcher_holder, holder_pid
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WORKERS = 4
USER, USER_PASSWORD = "worker-test-user", "worker-test-password-1"
ES_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    "training_config": {"steps": 6, "population": 8, "checkpoint_interval": 3},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
}


@contextmanager
def gateway_processes(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[Any]:
    log_path = Path(env["DISTLM_STORAGE_PATH"]).parent / "gateway.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, start_new_session=True, stdout=log_file, stderr=log_file
        )
    base = f"http://127.0.0.1:{env['DISTLM_PORT']}"

    def healthy() -> bool:
        assert process.poll() is None, f"gateway exited:\n{log_path.read_text()[-4000:]}"
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout_s=180, what="the gateway's workers to serve", every_s=0.5)
        yield base, process, log_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: every worker leaves, the last stops Ray
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@contextmanager
def lending_this_machine(base: str, tmp: Path, ray_tmpdir: str) -> Iterator[subprocess.Popen]:
    """`distlm-node` for the admin on this machine (1 CPU), its Ray's files in
    ``ray_tmpdir``, stopped with Ctrl-C after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTLM_"))}
    env.update(
        PYTHONPATH=str(ROOT / "backend"),
        DISTLM_NODE_USERNAME="admin",
        DISTLM_NODE_PASSWORD="admin-change-me",
        RAY_TMPDIR=ray_tmpdir,
    )
    command = [
        PYTHON, "-m", "agent", "--coordinator-address", base, "--hostname", "this-machine",
        "--cpu", "--cpus", "1", "--memory-gb", "1", "--object-store-mb", "80",
        "--credential-file", str(tmp / "node.json"), "--heartbeat-interval", "1",
    ]  # fmt: skip
    with open(tmp / "agent.log", "wb") as out:
        agent = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield agent
    finally:
        agent.send_signal(signal.SIGINT)
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=10)


def environment(tmp: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTLM_"))}
    env.update(
        PYTHONPATH=str(ROOT / "backend"),
        DISTLM_PORT=str(free_port()),
        DISTLM_HOST="127.0.0.1",
        DISTLM_DATABASE_URL=database_url,
        DISTLM_STORAGE_PATH=str(tmp / "storage"),
        DISTLM_RAY_NUM_CPUS="1",
        DISTLM_ARGON2_TIME_COST="1",
        DISTLM_ARGON2_MEMORY_KIB="1024",
        DISTLM_ADMIN_USERNAME="admin",
        DISTLM_ADMIN_PASSWORD="admin-change-me",
        DISTLM_LEADER_LEASE_S="3",
        DISTLM_DISPATCH_INTERVAL_S="0.5",
        DISTLM_WORKERS=str(WORKERS),
        # The head's files (and its "current cluster" note) away from other tests' Ray;
        # short, for Ray's socket paths.
        RAY_TMPDIR=tempfile.mkdtemp(prefix="distlm-ray-", dir="/tmp"),
        # Where the workers keep their Prometheus files, one per process, so the test can
        # read which process served what (the launcher keeps a directory it is given).
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "prometheus"),
    )
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
    return env


def heads_started_since(started: float, ray_tmpdir: str) -> list[psutil.Process]:
    """`ray start --head` processes started since ``started`` with this launcher's Ray
    directory (RAY_TMPDIR, passed on to the node's Ray): another launcher (another test
    process under pytest-xdist, a benchmark) may be running a Ray of its own beside it."""
    heads = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = process.info["cmdline"] or []
        if "start" in cmdline and "--head" in cmdline and process.info["create_time"] >= started:
            try:
                if process.environ().get("RAY_TMPDIR") == ray_tmpdir:
                    heads.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return heads


def leader_pid(database_url: str) -> int:
    holder = dispatcher_holder(database_url)
    assert holder is not None, "no process holds the dispatcher's lease"
    return holder_pid(holder)


def run_job(base: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    submitted = httpx.post(f"{base}/jobs/submit", headers=headers, json=ES_JOB, timeout=30)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    return wait_for(
        lambda: (
            (j := httpx.get(f"{base}/jobs/{job_id}", headers=headers, timeout=10).json())["status"]
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout_s=240,
        what=f"job {job_id} to finish",
    )


def exercise(base: str, database_url: str, started: float, ray_tmpdir: str) -> None:
    admin = login(base, "admin", "admin-change-me")
    registered = httpx.post(
        f"{base}/auth/register",
        headers={"Authorization": f"Bearer {admin}"},
        json={"username": USER, "password": USER_PASSWORD, "role": "user"},
        timeout=30,
    )
    assert registered.status_code == 201, registered.text
    user = login(base, USER, USER_PASSWORD)
    headers = {"Authorization": f"Bearer {user}"}

    first, second = run_job(base, user), run_job(base, user)
    for job in (first, second):
        assert job["status"] == "succeeded", job["status_reason"]
        assert job["attempts"] == 1, job["status_reason"]  # one runner, never run twice
    history = httpx.get(
        f"{base}/tokens/history/me", headers=headers, params={"limit": 500}, timeout=10
    ).json()["items"]
    for job in (first, second):
        settlements = {
            entry["transaction_id"]
            for entry in history
            if entry["job_id"] == job["id"] and entry["transaction_kind"] == "settlement"
        }
        assert len(settlements) == 1, history  # settled exactly once
    balance = httpx.get(f"{base}/tokens/balance/me", headers=headers, timeout=10).json()
    assert balance["spent"] > 0 and balance["held"] == 0  # charged for what ran
    assert (
        len(heads_started_since(started, ray_tmpdir)) == 1
    )  # one local agent's Ray, whatever the workers

    leader = leader_pid(database_url)
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(leader), timeout_s=30, what="the leader to die")
    third = run_job(base, user)
    assert third["status"] == "succeeded", third["status_reason"]
    assert third["attempts"] == 1
    assert leader_pid(database_url) != leader
    assert len(heads_started_since(started, ray_tmpdir)) == 1  # the agent's Ray outlived the leader


def test_four_make_run_workers_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = environment(tmp_path, database_url)
    started = time.time()
    command = [PYTHON, "-m", "app.launcher"]
    with gateway_processes(command, ROOT, env) as (base, process, _log):
        requests_served_by_several_workers_and_counted_by_all(base, process, env)
        exercise(base, database_url, started, env["RAY_TMPDIR"])
    wait_for(
        lambda: not heads_started_since(started, env["RAY_TMPDIR"]),
        timeout_s=120,  # a busy machine stops a Ray of warm workers slowly
        what="the head to stop",
    )


def requests_by_process(figures: Path, route: str) -> dict[int, float]:
    """How many requests for ``route`` each worker process counted, from its own file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for path in figures.glob("counter_*.db"):
        counted = sum(
            sample.value
            for family in MultiProcessCollector.merge([str(path)])
            for sample in family.samples
            if sample.name == "distlm_http_requests_total" and sample.labels["route"] == route
        )
        if counted:
            counts[int(path.stem.removeprefix("counter_"))] = counted
    return counts


def requests_served_by_several_workers_and_counted_by_all(
    base: str, server: subprocess.Popen, env: dict[str, str]
) -> None:
    """More than one of the server's worker processes serves requests, and they share
    their Prometheus figures: GET /metrics, on whichever worker answers it, counts the
    requests that every worker served."""
    from prometheus_client.parser import text_string_to_metric_families

    figures = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    admin = {"Authorization": f"Bearer {login(base, 'admin', 'admin-change-me')}"}
    sent = 0

    def two_workers_answered() -> bool:
        nonlocal sent
        for _ in range(8):  # new connections: uvicorn spreads them over the workers
            assert httpx.get(f"{base}/auth/me", headers=admin, timeout=10).status_code == 200
            sent += 1
        return len(requests_by_process(figures, "/auth/me")) >= 2

    wait_for(
        two_workers_answered,
        timeout_s=120,
        what=lambda: f"a second worker to answer: {requests_by_process(figures, '/auth/me')}",
    )
    # A worker counts a request once its answer has gone out, so the last count may land
    # a moment after the client has read the answer.
    wait_for(
        lambda: sum(requests_by_process(figures, "/auth/me").values()) == sent,
        timeout_s=10,
        what=lambda: f"{sent} requests counted: {requests_by_process(figures, '/auth/me')}",
    )
    served = requests_by_process(figures, "/auth/me")
    workers = {child.pid for child in psutil.Process(server.pid).children(recursive=True)}
    assert set(served) <= workers, (served, workers)  # the server's own workers
    assert sum(served.values()) == sent
    text = httpx.get(f"{base}/metrics", headers=admin, timeout=30).text
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "distlm_http_requests_total" and sample.labels["route"] == "/auth/me"
    )
    assert counted == sent


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_url(), reason="TEST_DATABASE_URL not set")
def test_seed_uvicorn_with_four_workers_on_a_fresh_postgresql(tmp_path: Path) -> None:
    server = create_engine(postgres_url() or "", isolation_level="AUTOCOMMIT")
    name = f"distlm_workers_{uuid.uuid4().hex[:8]}"
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = str(server.url.set(database=name).render_as_string(hide_password=False))
    try:
        env = environment(tmp_path, database_url)
        started = time.time()
        uvicorn = str(Path(PYTHON).with_name("uvicorn"))
        command = [uvicorn, "app.main:app", "--workers", str(WORKERS), "--port", env["DISTLM_PORT"]]
        with gateway_processes(command, ROOT / "backend", env) as (base, process, _log):
            requests_served_by_several_workers_and_counted_by_all(base, process, env)
            # Plain uvicorn serves the gateway alone; the machine is lent as any node is.
            with lending_this_machine(base, tmp_path, env["RAY_TMPDIR"]):
                exercise(base, database_url, started, env["RAY_TMPDIR"])
        wait_for(
            lambda: not heads_started_since(started, env["RAY_TMPDIR"]),
            timeout_s=60,
            what="the head to stop",
        )
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
