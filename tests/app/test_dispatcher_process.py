"""`make run` dispatches in a process of its own (issue 25, item 1): its rounds never take
a worker's turn at the interpreter lock. The launcher starts it, starts it again when it
dies (the new one takes the lease over), stops it with the gateway, and a dispatcher whose
launcher was killed outright stops by itself. Its figures reach GET /metrics on the worker."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.agent.gateway_process import Gateway, running_gateway
from tests.leases import dispatcher_holder, holder_pid
from tests.polling import wait_for

pytestmark = pytest.mark.slow

NO_NODE_YET = "waiting for an online, approved node"  # the dispatcher's reason, not submit's
QUEUED_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    "training_config": {"steps": 2, "population": 4},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
}


def dispatcher(database: Path) -> psutil.Process | None:
    """The live process holding the dispatcher's lease, if there is one."""
    holder = dispatcher_holder(f"sqlite:///{database}")
    if holder is None:
        return None
    try:
        return psutil.Process(holder_pid(holder))
    except psutil.NoSuchProcess:
        return None


def placed_by_dispatcher(gateway: Gateway) -> int:
    """Submit a job and wait for the dispatcher's own reason on it (no node is online)."""
    job = gateway.as_owner("POST", "/jobs/submit", json=QUEUED_JOB)
    assert job["status_reason"] != NO_NODE_YET  # submit's words, not yet the dispatcher's
    wait_for(
        lambda: gateway.as_owner("GET", f"/jobs/{job['id']}")["status_reason"] == NO_NODE_YET,
        timeout_s=30,
        what="the dispatcher to look at the job",
    )
    return job["id"]


def dispatcher_rounds(gateway: Gateway) -> float:
    figures = httpx.get(
        f"{gateway.base}/metrics",
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
        timeout=10,
    ).text
    return sum(
        float(line.split()[-1])
        for line in figures.splitlines()
        if line.startswith("distlm_dispatcher_round_duration_seconds_count")
    )


def test_make_run_dispatches_in_a_process_of_its_own_and_restarts_it(tmp_path: Path) -> None:
    database = tmp_path / "gateway.db"
    with running_gateway(
        tmp_path,
        DISTLM_LOCAL_NODE="false",
        DISTLM_LEADER_LEASE_S="2",
        DISTLM_DISPATCH_INTERVAL_S="0.3",
    ) as gateway:
        launcher = psutil.Process(gateway.process.pid)  # one worker: it serves, itself
        first = wait_for(lambda: dispatcher(database), timeout_s=30, what="a dispatcher")
        assert first.pid != launcher.pid
        assert first.ppid() == launcher.pid
        assert "compute.dispatch" in first.cmdline()
        placed_by_dispatcher(gateway)
        assert dispatcher_rounds(gateway) > 0  # counted in its process, read on the worker

        first.kill()  # the launcher starts another, which takes the lease once it lapses
        second = wait_for(
            lambda: (found := dispatcher(database)) and found.pid != first.pid and found,
            timeout_s=30,
            what="the dispatcher to be started again",
        )
        assert second.ppid() == launcher.pid
        assert "compute.dispatch" in second.cmdline()
        placed_by_dispatcher(gateway)

        os.kill(launcher.pid, signal.SIGKILL)  # nothing left to stop it: it stops itself
        wait_for(
            lambda: not second.is_running() or second.status() == psutil.STATUS_ZOMBIE,
            timeout_s=15,
            what="the orphaned dispatcher to stop",
        )
