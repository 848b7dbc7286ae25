"""Submits against the stack's ceiling (issue 25, item 1), in one run with one client.

    PYTHONPATH=backend .venv/bin/python benchmarks/submit.py \
        [--database postgresql://postgres@127.0.0.1:5432/test] [--workers 1,4]
        [--concurrency 1,8,32] [--seconds 5] [--repeat 3] [--reads-while-starting]

For each number of worker processes: the real gateway (`app.launcher`, no node of its own,
so nothing but the gateway shares the machine with the database and the client) on a fresh
database, then the ceiling app (`submit_ceiling_app.py`: a sync FastAPI route, a PyJWT
bearer check, one SQLAlchemy session that reads a row and inserts one) under uvicorn with
the same number of workers on another fresh database of the same server; the same threads
with keep-alive connections load each for the same seconds. With `--repeat N` the two take
turns N times and the report gives the medians (this machine's speed drifts by 10-20%
between runs). The gateway's submit is the one a user makes: a job that waits in the queue
(it asks for a GPU no node has), with its hold.

`--reads-while-starting` then starts the gateway with its local node and compares the p99 of
`GET /jobs` idle with the p99 while three small jobs start and run on that node.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks.results
# Before this folder (run as a script it comes first): benchmarks/ledger.py is not `ledger`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))

from benchmarks.results import report

from auth.models import Role
from auth.passwords import password_context
from compute.accounts.service import register_user
from core.db import get_engine, make_session_factory, session_scope
from core.settings import normalise_database_url
from gateway import (
    PASSWORD,
    WAITING_JOB,
    Figures,
    calls,
    free_port,
    fresh_database,
    load,
    running_gateway,
    seed,
    small_jobs_running,
)

HERE = Path(__file__).resolve().parent


@contextmanager
def running_ceiling(database_url: str, workers: int) -> Iterator[tuple[str, dict[str, str]]]:
    """The ceiling app under uvicorn; yields its base URL and a bearer header."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTLM_"))}
    env.update(CEILING_DATABASE_URL=database_url, PYTHONPATH=f"{HERE}:{HERE.parent / 'backend'}")
    subprocess.run(
        [sys.executable, "-c", "import submit_ceiling_app as a; a.make_table()"],
        cwd=HERE,
        env=env,
        check=True,
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "submit_ceiling_app:app",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=HERE,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/docs", timeout=2)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the ceiling app did not start") from None
                time.sleep(0.3)
        token = subprocess.run(
            [sys.executable, "-c", "import submit_ceiling_app as a; print(a.token('bench'))"],
            cwd=HERE,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        yield base, {"Authorization": f"Bearer {token}"}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def users_submitting(database_url: str, base: str, count: int) -> Callable:
    """A submit call whose every client thread is a user of its own (their wallets are
    separate rows: no client waits for another's hold), with ``count`` users made first."""
    factory = make_session_factory(get_engine(normalise_database_url(database_url)))
    context = password_context(1, 1024)
    with session_scope(factory) as session:
        for n in range(count):
            register_user(session, context, username=f"client{n}", password=PASSWORD,
                          role=Role.USER, signup_grant=10**15)  # fmt: skip
    tokens = [
        httpx.post(
            f"{base}/auth/token", data={"username": f"client{n}", "password": PASSWORD}
        ).json()["access_token"]
        for n in range(count)
    ]
    handed = itertools.count()
    mine = threading.local()

    def submit(client: httpx.Client) -> httpx.Response:
        if not hasattr(mine, "auth"):
            mine.auth = {"Authorization": f"Bearer {tokens[next(handed) % count]}"}
        return client.post("/jobs/submit", headers=mine.auth, json=WAITING_JOB)

    return submit


def cell(name: str, workers: int, clients: int, figures: Figures, ceiling: Figures) -> None:
    print(
        f"| {workers} | {clients} | {figures.per_s:6.1f} ({figures.p50_ms:.1f} / "
        f"{figures.p99_ms:.0f}) | {ceiling.per_s:6.1f} ({ceiling.p50_ms:.1f} / "
        f"{ceiling.p99_ms:.0f}) | **{figures.per_s / ceiling.per_s:.2f}x** "
        f"| {figures.errors + ceiling.errors} |",
        flush=True,
    )


def our_submits(args: argparse.Namespace, workers: int, tmp: Path) -> dict[int, Figures]:
    """The real gateway's submits/s for each number of clients, on a fresh database."""
    ours: dict[int, Figures] = {}
    with fresh_database(args.database, tmp) as url:
        seed(url, 10)
        with running_gateway(url, tmp, workers, {"DISTLM_LOCAL_NODE": "false"}) as gw:
            submit = calls(gw.base)["submit"]
            if args.user_per_client:
                submit = users_submitting(url, gw.base, max(args.clients))
            load(submit, gw.base, 2, 1.0)  # warm every worker's caches
            for clients in args.clients:
                ours[clients] = load(submit, gw.base, clients, args.seconds)
    return ours


def ceiling_submits(args: argparse.Namespace, workers: int, tmp: Path) -> dict[int, Figures]:
    """The ceiling app's, the same way."""
    with fresh_database(args.database, tmp) as url, running_ceiling(url, workers) as (base, auth):

        def ceiling_submit(client: httpx.Client) -> httpx.Response:
            return client.post("/jobs/submit", headers=auth, json=WAITING_JOB)

        load(ceiling_submit, base, 2, 1.0)
        return {clients: load(ceiling_submit, base, clients, args.seconds)
                for clients in args.clients}  # fmt: skip


def submits_against_ceiling(args: argparse.Namespace) -> None:
    """Each number of workers: the gateway then the ceiling, ``--repeat`` times in turn (this
    machine's speed drifts by 10-20% between runs); the report takes the medians."""
    print("| workers | clients | DistLM submit/s (p50 / p99 ms) | ceiling | ratio | errors |")
    print("|---|---|---|---|---|---|")
    for workers in (int(w) for w in args.workers.split(",")):
        ours: dict[int, list[Figures]] = {clients: [] for clients in args.clients}
        ceiling: dict[int, list[Figures]] = {clients: [] for clients in args.clients}
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="distlm-bench-") as tmp_name:
                mine = our_submits(args, workers, Path(tmp_name))
                theirs = ceiling_submits(args, workers, Path(tmp_name))
            for clients in args.clients:
                ours[clients].append(mine[clients])
                ceiling[clients].append(theirs[clients])
                cell("submit", workers, clients, mine[clients], theirs[clients])
        rate = {clients: median(f.per_s for f in ours[clients]) for clients in args.clients}
        limit = {clients: median(f.per_s for f in ceiling[clients]) for clients in args.clients}
        best = max(args.clients, key=lambda clients: rate[clients])
        who = "a user per client" if args.user_per_client else "one user"
        runs = f"median of {args.repeat}" if args.repeat > 1 else "one run"
        if workers == 1:
            report("submit", f"submits/s, 1 process, {best} clients, {who} ({runs})",
                   rate[best], unit="/s", baseline=limit[best],
                   baseline_name="stack's ceiling", aim=">= 0.5")  # fmt: skip
        else:
            report("submit", f"submits/s, {workers} processes, {best} clients, {who} "
                   f"(ceiling {limit[best]:.0f}/s, {runs})",
                   rate[best], unit="/s", aim=">= 300")  # fmt: skip


def reads_while_jobs_start(args: argparse.Namespace) -> None:
    clients = 8
    with tempfile.TemporaryDirectory(prefix="distlm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with fresh_database(args.database, tmp) as url:
            seed(url, 10)
            with running_gateway(url, tmp, 1) as gateway:
                listing = calls(gateway.base)["GET /jobs"]
                load(listing, gateway.base, 2, 1.0)
                idle = load(listing, gateway.base, clients, args.seconds)
                with small_jobs_running(gateway.base, 3):
                    busy = load(listing, gateway.base, clients, args.seconds)
    print(
        f"\nGET /jobs, {clients} clients, 1 worker: idle {idle.per_s:.0f}/s p99 "
        f"{idle.p99_ms:.0f} ms; while 3 jobs start and run {busy.per_s:.0f}/s p99 "
        f"{busy.p99_ms:.0f} ms: **{busy.p99_ms / idle.p99_ms:.2f}x idle p99**"
    )
    report("submit", "GET /jobs p99 while 3 jobs start", busy.p99_ms, unit="ms",
           baseline=idle.p99_ms, baseline_name="idle", aim="<= 2")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1, help="gateway and ceiling in turn")
    parser.add_argument("--reads-while-starting", action="store_true")
    parser.add_argument(
        "--user-per-client",
        action="store_true",
        help="each client thread submits as a user of its own (default: all as one user, "
        "whose wallet row every hold locks in turn)",
    )
    args = parser.parse_args()
    args.clients = [int(c) for c in args.concurrency.split(",")]
    submits_against_ceiling(args)
    if args.reads_while_starting:
        reads_while_jobs_start(args)


if __name__ == "__main__":
    main()
