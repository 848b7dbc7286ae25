"""`make run` serves the README: the real launcher (local Ray included) runs the README's
Quickstart and Running-jobs curl blocks as typed, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.paths import REPO_ROOT
from tests.polling import wait_for

ROOT = REPO_ROOT
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_block(heading: str) -> str:
    """The first bash block under a README heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"## {heading}", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"README has no bash block under {heading}"
    return match.group(1)


def wait_healthy(base: str, process: subprocess.Popen, timeout_s: float = 120) -> dict:
    def health() -> dict | None:
        assert process.poll() is None, f"launcher exited early with {process.returncode}"
        try:
            response = httpx.get(f"{base}/health", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    return wait_for(health, timeout_s=timeout_s, what="the gateway to be healthy", every_s=0.5)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "backend"),
        "DISTLM_PORT": str(port),
        "DISTLM_DATABASE_URL": f"sqlite:///{tmp_path / 'quickstart.db'}",
        "DISTLM_STORAGE_PATH": str(tmp_path / "storage"),
        "DISTLM_RAY_NUM_CPUS": "1",
        "DISTLM_ARGON2_TIME_COST": "1",
        "DISTLM_ARGON2_MEMORY_KIB": "1024",
        # The README's credentials, whatever a developer's backend/.env says.
        "DISTLM_ADMIN_USERNAME": "admin",
        "DISTLM_ADMIN_PASSWORD": "admin-change-me",
        "DISTLM_HOST": "127.0.0.1",
        # Its Ray head's files (and its "current cluster" note) away from other tests' Ray.
        # Short: Ray's socket paths live under it and must stay under 108 characters.
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="distlm-ray-", dir="/tmp"),
    }
    env.pop("RAY_ADDRESS", None)
    # The same command `make run` runs, in its own process group as a terminal would.
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "app.launcher"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_readme_quickstart_runs_as_typed_and_ctrl_c_stops_everything(
    gateway: tuple[str, subprocess.Popen], tmp_path: Path
) -> None:
    base, process = gateway
    health = wait_healthy(base, process)
    # The gateway runs no Ray; this machine's node agent, started beside it, runs one.
    assert health == {**health, "status": "ok", "database": "ok", "ray": "nodes"}
    ray_processes = wait_for(
        lambda: [
            p
            for p in psutil.Process(process.pid).children(recursive=True)
            if "ray" in " ".join(p.cmdline())
        ],
        timeout_s=120,
        what="the local node's agent to start its Ray",
    )

    # The quickstart, then the README's other examples in the same shell (they reuse
    # $OWNER_TOKEN, $JOB_ID and the helpers of "Running jobs").
    blocks = [
        "Quickstart",
        "Running jobs",
        "Split pipelines, validation and inference (`split`)",
        "Dashboard",
        "Administration",
    ]
    script = "".join(readme_block(heading) for heading in blocks).replace(
        "http://localhost:8000", base
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"error"' not in result.stdout, result.stdout
    assert '"status":"cancelled"' in result.stdout
    assert '"samples":[{' in result.stdout
    assert '"held":15.6' in result.stdout  # the seed job's hold, before the cancel
    assert '"available":150.0' in result.stdout  # signup grant + the admin's 50, refunded
    assert '"invariant_ok":true' in result.stdout
    assert '"status":"succeeded"' in result.stdout  # the tiny-gpt2 job of "Running jobs"
    assert "model.safetensors" in result.stdout  # its downloaded model
    # The federated and ES jobs of "Running jobs" ended well and showed their last records.
    assert result.stdout.count('"status":"succeeded"') >= 3, result.stdout
    assert "'validation_accuracy'" in result.stdout and "'clients_returned': 4" in result.stdout
    assert "'evaluations_per_s'" in result.stdout and "'sample_text'" in result.stdout
    assert '"status":"deregistered"' in result.stdout  # the Quickstart cleaned up its node
    # The CPU split job, then validate and infer with its model, as the caller's own job.
    assert result.stdout.count('"status":"succeeded"') >= 6, result.stdout
    assert '"confusion_matrix":[[' in result.stdout and '"rows":[{"id":' in result.stdout
    assert (tmp_path / "predictions.parquet").read_bytes()[:4] == b"PAR1"
    assert "event: end" in result.stdout  # the events of a finished job, to its end
    assert '"running_jobs":' in result.stdout and '"refresh_token":' in result.stdout

    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
    process.wait(timeout=60)
    _gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, f"still running after Ctrl-C: {[p.cmdline()[:2] for p in alive]}"
