"""The gateway under load: throughput and latency of submit, heartbeat, `GET /jobs` and the
balance at several concurrencies, with 1 or N worker processes, with a small or a large
history in the database, idle and while small jobs run, and the gateway's memory before and
after. Nothing is asserted: figures and ratios against a baseline run in the same process.

    PYTHONPATH=backend .venv/bin/python benchmarks/gateway.py [--database sqlite|URL]
        [--workers 1,4] [--history 10,10000] [--concurrency 1,8,32] [--seconds 5]

The gateway is the real launcher (`make run`) in a subprocess on a fresh database; history
is seeded through the services (each job submitted with its hold, then cancelled and
refunded), so the ledger holds what real use leaves behind. Load comes from threads, one
keep-alive httpx client each.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))

import httpx
import psutil
from sqlalchemy import create_engine, text

from auth.models import Role
from auth.passwords import password_context
from compute.accounts.service import register_user
from compute.jobs.service import cancel_job, submit_job
from compute.jobs.spec import JobSpec
from core.db import get_engine, make_session_factory, session_scope
from core.migrations import upgrade_to_head
from core.settings import normalise_database_url
from ledger.pricing import Rates

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-1234"
ADMIN_PASSWORD = "bench-admin-password"
# Needs a GPU no node has: it waits in the queue, so submits measure the gateway, not Ray.
WAITING_JOB = {
    "model_config": {"type": "simple_transformer", "model_name": "tiny-gpt2"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    "requirements": {"gpu": 1, "cpu_cores": 1, "memory": 1},
}
SMALL_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    "training_config": {"steps": 40, "population": 16},
    "requirements": {"gpu": 0, "cpu_cores": 0.5, "memory": 0.5},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def fresh_database(target: str, tmp: Path) -> Iterator[str]:
    if target == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    server = create_engine(normalise_database_url(target), isolation_level="AUTOCOMMIT")
    name = f"distlm_bench_{uuid.uuid4().hex[:8]}"
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def seed(database_url: str, history: int) -> None:
    """The bench user with `history` finished jobs (hold, then cancel and refund each)."""
    url = normalise_database_url(database_url)
    upgrade_to_head(url)
    factory = make_session_factory(get_engine(url))
    context = password_context(1, 1024)
    rates = Rates.of(10, 1, 0.1, 5)
    spec = JobSpec.model_validate(WAITING_JOB)
    with session_scope(factory) as session:
        user = register_user(
            session,
            context,
            username="bench",
            password=PASSWORD,
            role=Role.NODE_OWNER,
            signup_grant=10**15,
        )
    done = 0
    while done < history:
        with session_scope(factory) as session:
            user = session.merge(user)
            for _ in range(min(500, history - done)):
                job, _ = submit_job(
                    session,
                    user,
                    spec,
                    idempotency_key=None,
                    default_max_runtime_s=60,
                    rates=rates,
                )
                cancel_job(session, user, job.id, rates=rates)
                done += 1


@dataclass
class Gateway:
    base: str
    process: subprocess.Popen

    def rss_mb(self) -> float:
        """The gateway's processes (launcher and workers), not Ray's."""
        root = psutil.Process(self.process.pid)
        processes = [root, *root.children(recursive=True)]
        return (
            sum(
                p.memory_info().rss
                for p in processes
                if p.is_running() and "ray" not in " ".join(p.cmdline()[:2])
            )
            / 2**20
        )


@contextmanager
def running_gateway(
    database_url: str, tmp: Path, workers: int, extra_env: dict[str, str] | None = None
) -> Iterator[Gateway]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTLM_"))}
    env.update(
        PYTHONPATH=str(ROOT / "backend"),
        DISTLM_PORT=str(port),
        DISTLM_DATABASE_URL=database_url,
        DISTLM_STORAGE_PATH=str(tmp / f"storage-{workers}"),
        DISTLM_ADMIN_PASSWORD=ADMIN_PASSWORD,
        DISTLM_ARGON2_TIME_COST="1",
        DISTLM_ARGON2_MEMORY_KIB="1024",
        DISTLM_RAY_NUM_CPUS="2",
        DISTLM_WORKERS=str(workers),
        DISTLM_MAX_WAITING_JOBS_PER_USER="0",
        DISTLM_SUBMITS_PER_MINUTE="0",
        DISTLM_LOG_LEVEL="warning",
    )
    env.update(extra_env or {})
    log = open(tmp / f"gateway-{workers}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "app.launcher"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    gateway = Gateway(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{gateway.base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gateway did not start: see {log.name}")
            time.sleep(0.5)
        yield gateway
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@dataclass(frozen=True)
class Figures:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds


def load(
    call: Callable[[httpx.Client], httpx.Response], base: str, clients: int, seconds: float
) -> Figures:
    """`clients` threads, each with its own keep-alive connection, calling for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        mine: list[float] = []
        failed = 0
        with httpx.Client(base_url=base, timeout=60) as client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                response = call(client)
                mine.append(time.perf_counter() - started)
                failed += response.status_code >= 400
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Figures(
        len(latencies), elapsed, statistics.median(latencies) * 1000, p99 * 1000, errors[0]
    )


def calls(base: str) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    token = httpx.post(
        f"{base}/auth/token", data={"username": "bench", "password": PASSWORD}, timeout=30
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    node = httpx.post(
        f"{base}/nodes/register",
        headers=auth,
        timeout=30,
        json={
            "hostname": f"bench-{uuid.uuid4().hex[:6]}",
            "resources": {"gpu": 0, "cpu_cores": 1, "memory": 1},
        },
    ).json()
    node_auth = {"Authorization": f"Bearer {node['credential']}"}
    beat = {"cpu_percent": 12.5, "memory_used_gb": 0.4}
    return {
        # One page of 10 either way: the figures compare the cost of history, not page sizes.
        "GET /jobs": lambda c: c.get("/jobs", headers=auth, params={"limit": 10}),
        "balance": lambda c: c.get("/tokens/balance/me", headers=auth),
        "history": lambda c: c.get("/tokens/history/me", headers=auth, params={"limit": 10}),
        "heartbeat": lambda c: c.post(
            f"/nodes/{node['id']}/heartbeat", headers=node_auth, json=beat
        ),
        "submit": lambda c: c.post("/jobs/submit", headers=auth, json=WAITING_JOB),
    }


@contextmanager
def small_jobs_running(base: str, count: int) -> Iterator[None]:
    token = httpx.post(
        f"{base}/auth/token", data={"username": "bench", "password": PASSWORD}, timeout=30
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    ids = [
        httpx.post(f"{base}/jobs/submit", headers=auth, json=SMALL_JOB, timeout=30).json()["id"]
        for _ in range(count)
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [
            httpx.get(f"{base}/jobs/{i}", headers=auth, timeout=30).json()["status"] for i in ids
        ]
        if states.count("running") >= min(count, 2):
            break
        time.sleep(0.5)
    yield
    for job_id in ids:
        httpx.post(f"{base}/jobs/{job_id}/cancel", headers=auth, timeout=30)


def row(label: str, name: str, clients: int, f: Figures, baseline: Figures | None) -> None:
    ratio = f" {f.p99_ms / baseline.p99_ms:5.2f}x p99" if baseline else ""
    print(
        f"| {label} | {name} | {clients} | {f.per_s:7.1f} | {f.p50_ms:7.1f} | {f.p99_ms:7.1f} "
        f"| {f.errors} |{ratio}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="sqlite", help="sqlite, or a PostgreSQL URL")
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--history", default="10,10000")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--running-jobs", type=int, default=3)
    parser.add_argument(
        "--soak-rounds", type=int, default=3, help="rounds of mixed load, RSS after each"
    )
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print("| setup | call | clients | req/s | p50 ms | p99 ms | errors | vs baseline")
    print("|---|---|---|---|---|---|---|---|")
    for history in (int(h) for h in args.history.split(",")):
        for workers in (int(w) for w in args.workers.split(",")):
            with tempfile.TemporaryDirectory(prefix="distlm-bench-") as tmp_name:
                tmp = Path(tmp_name)
                with fresh_database(args.database, tmp) as url:
                    seeded = time.monotonic()
                    seed(url, history)
                    print(f"<!-- seeded {history} jobs in {time.monotonic() - seeded:.1f} s -->")
                    with running_gateway(url, tmp, workers) as gateway:
                        label = f"{workers} worker(s), {history} jobs"
                        endpoints = calls(gateway.base)
                        rss_before = gateway.rss_mb()
                        idle: dict[tuple[str, int], Figures] = {}
                        for name in ("GET /jobs", "balance", "history", "heartbeat", "submit"):
                            for clients in concurrencies:
                                figures = load(endpoints[name], gateway.base, clients, args.seconds)
                                idle[(name, clients)] = figures
                                row(label, name, clients, figures, None)
                        if args.running_jobs:
                            with small_jobs_running(gateway.base, args.running_jobs):
                                for name in ("GET /jobs", "submit"):
                                    clients = concurrencies[-1]
                                    figures = load(
                                        endpoints[name], gateway.base, clients, args.seconds
                                    )
                                    row(
                                        f"{label}, {args.running_jobs} jobs running",
                                        name,
                                        clients,
                                        figures,
                                        idle[(name, clients)],
                                    )
                        after = [gateway.rss_mb()]
                        for _ in range(args.soak_rounds):  # does memory level off?
                            for name in ("GET /jobs", "balance", "heartbeat", "submit"):
                                load(endpoints[name], gateway.base, 8, args.seconds)
                            after.append(gateway.rss_mb())
                        rss = ", ".join(f"{mb:.0f}" for mb in after)
                        print(
                            f"<!-- {label}: gateway RSS {rss_before:.0f} MB before load; after "
                            f"the matrix, then after each soak round: {rss} MB -->",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
