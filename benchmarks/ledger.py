"""Ledger postings per second on SQLite and PostgreSQL, with 1 and 8 concurrent writers.

Each "posting" is one hold (wallet → escrow, with the conditional debit) followed by one
settlement (escrow → node owner, fee and refund): the two transactions every job makes.
After each run the invariant check over all entries must pass. With 8 writers it runs three
times: all jobs paid by one payer to one node owner (every posting touches their wallets: the
worst case), by 8 payers to 8 owners (as many users as writers), both as threads of one
process; then 8 payers and owners again with the writers as processes (as a gateway's
workers are: they share no interpreter lock).

    PYTHONPATH=backend .venv/bin/python benchmarks/ledger.py [--postgres URL] [--jobs 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks.results

from benchmarks.results import report
from sqlalchemy import MetaData, create_engine

from auth.models import Role, User
from core.db import get_engine, make_session_factory, session_scope
from core.migrations import upgrade_to_head
from core.settings import normalise_database_url
from ledger.flows import grant_tokens, place_hold
from ledger.invariants import ledger_report
from ledger.models import MICRO, TransactionKind
from ledger.pricing import Rates, ResourceSeconds
from ledger.settlement import NodeUsage, settle_job

RATES = Rates.of(10, 1, 0.1, 5)
# (writers, payers = owners, writers are processes): threads of one process, then processes.
ROWS = ((1, 1, False), (8, 1, False), (8, 8, False), (8, 8, True))
WORK = ResourceSeconds(cpu_core_seconds=1800)


def fresh_database(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    if url.startswith("postgresql"):
        engine = create_engine(url)
        with engine.begin() as connection:
            metadata = MetaData()
            metadata.reflect(connection)
            metadata.drop_all(connection)
        engine.dispose()
    upgrade_to_head(url)


def run(
    url: str, writers: int, jobs: int, payers: int = 1, *, processes: bool = False
) -> dict[str, object]:
    """``jobs`` jobs held and settled by ``writers`` threads (or processes, as a gateway's
    workers are: no interpreter lock shared); job n is paid by payer n % ``payers`` and runs
    on that many owners' nodes alike (one payer and one owner: every posting touches their
    wallets, the worst case)."""
    fresh_database(url)
    factory = make_session_factory(get_engine(url))
    with session_scope(factory) as session:
        users = [User(username=f"payer{n}", password_hash="-", role=Role.USER.value)
                 for n in range(payers)]  # fmt: skip
        owners = [User(username=f"owner{n}", password_hash="-", role=Role.NODE_OWNER.value)
                  for n in range(payers)]  # fmt: skip
        session.add_all([*users, *owners])
        session.flush()
        payer_ids, owner_ids = [user.id for user in users], [owner.id for owner in owners]
        for payer_id in payer_ids:
            grant_tokens(
                session,
                user_id=payer_id,
                amount=10**9 * MICRO,
                kind=TransactionKind.ADMIN_GRANT,
                key=f"bench-grant-{payer_id}",
            )
    get_engine(url).dispose()  # a forked writer opens connections of its own
    work = partial(one_job, url, payer_ids, owner_ids)
    started = time.perf_counter()
    if processes:
        with multiprocessing.get_context("fork").Pool(writers) as pool:
            pool.map(work, range(1, jobs + 1), chunksize=8)
    else:
        with ThreadPoolExecutor(max_workers=writers) as threads:
            list(threads.map(work, range(1, jobs + 1)))
    elapsed = time.perf_counter() - started
    with session_scope(factory) as session:
        report = ledger_report(session, terminal_job_ids=set(range(1, jobs + 1)))
    get_engine(url).dispose()
    return {
        "postings": 2 * jobs,
        "seconds": elapsed,
        "postings_per_s": 2 * jobs / elapsed,
        "invariant_ok": report.invariant_ok,
    }


def one_job(url: str, payer_ids: list[int], owner_ids: list[int], job_id: int) -> None:
    """Hold, then settle, job ``job_id``: the two transactions every job makes."""
    payers = len(payer_ids)
    payer_id, owner_id = payer_ids[job_id % payers], owner_ids[job_id % payers]
    factory = make_session_factory(get_engine(url))
    with session_scope(factory) as session:
        place_hold(session, user_id=payer_id, job_id=job_id, amount=2 * MICRO)
    with session_scope(factory) as session:
        settle_job(
            session,
            job_id=job_id,
            job_owner_id=payer_id,
            rates=RATES,
            usage=[NodeUsage(1 + job_id % payers, owner_id, WORK)],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    targets = {}
    with tempfile.TemporaryDirectory() as tmp:
        targets["sqlite"] = f"sqlite:///{tmp}/bench.db"
        if args.postgres:
            targets["postgresql"] = normalise_database_url(args.postgres)
        print(
            f"{'database':<11} {'writers':>9} {'payers':>6} {'postings':>8} {'seconds':>8} "
            f"{'postings/s':>10} {'vs 1 writer':>11}  invariant"
        )
        for name, url in targets.items():
            baseline = None
            for writers, payers, processes in ROWS:
                result = run(url, writers, args.jobs, payers, processes=processes)
                rate = float(result["postings_per_s"])  # type: ignore[arg-type]
                baseline = baseline or rate
                who = f"{writers}{'p' if processes else 't'}"
                print(
                    f"{name:<11} {who:>9} {payers:>6} {result['postings']:>8} "
                    f"{result['seconds']:>8.2f} {rate:>10.0f} {rate / baseline:>10.2f}x"
                    f"  {'ok' if result['invariant_ok'] else 'BROKEN'}"
                )
                if not result["invariant_ok"]:
                    raise SystemExit("ledger invariant broken")
                if writers == 8 and payers == 8:
                    kind = "processes" if processes else "threads"
                    report(
                        "ledger",
                        f"postings/s, {name}, 8 writers ({kind})",
                        rate,
                        unit="/s",
                        aim=">= 1000" if name == "postgresql" else "",
                    )


if __name__ == "__main__":
    main()
