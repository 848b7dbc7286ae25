"""Checkpoint upload throughput (issue 20): a job driver's `PUT /runs/{id}/checkpoint` of a
checkpoint tar against copying the same bytes on local disk, in one run. Nothing is asserted.

    PYTHONPATH=backend .venv/bin/python benchmarks/uploads.py [--mb 64,256] [--repeat 3]

The gateway is uvicorn serving the real app (no Ray, no dispatcher: the job is set running in
the database) in a subprocess on a fresh SQLite file, over loopback. The upload streams the
tar from disk (httpx, 1 MiB chunks); the gateway hashes it, writes it, fsyncs it and unpacks
it over the job's accepted checkpoint. The baseline copies the same file with shutil and
fsyncs it: what moving the bytes on one machine costs without a network or a server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks.results

import httpx
from benchmarks.results import report

from auth.models import Role
from auth.passwords import password_context
from auth.run_tokens import RunClaims, create_run_token
from compute.accounts.service import register_user
from compute.jobs.service import submit_job
from compute.jobs.spec import JobSpec
from compute.models import Job
from core.db import get_engine, make_session_factory, session_scope, utcnow
from core.migrations import upgrade_to_head
from ledger.pricing import Rates

ROOT = Path(__file__).resolve().parent.parent
SECRET = "benchmark-secret-key-that-is-long-enough-0123"
JOB = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def running_job(database_url: str) -> int:
    """A job in the database, running its first attempt (as the dispatcher would leave it)."""
    factory = make_session_factory(get_engine(database_url))
    with session_scope(factory) as session:
        owner = register_user(
            session, password_context(1, 1024), username="bench", password="bench-pw-1234",
            role=Role.USER, signup_grant=10**12,
        )  # fmt: skip
        session.flush()
        rates = Rates.of(gpu_hour=1, cpu_core_hour=1, memory_gb_hour=0, fee_percent=0,
                         min_job_charge=0)  # fmt: skip
        job, _ = submit_job(
            session, owner, JobSpec.model_validate(JOB), idempotency_key=None,
            default_max_runtime_s=3600, rates=rates,
        )  # fmt: skip
        row = session.get(Job, job.id)
        row.status, row.attempts = "running", 1
        row.placement = [{"node_id": 1, "gpu": 0, "cpu_cores": 1.0, "memory_gb": 1.0}]
        row.started_at = row.updated_at = utcnow()
        return job.id


def checkpoint_tar(path: Path, megabytes: int) -> str:
    """A checkpoint-like tar (a state file and one big weights file of random bytes)."""
    weights = os.urandom(megabytes * 1024 * 1024)
    with tarfile.open(path, "w") as archive:
        for name, data in (("state.json", b'{"step": 10}'), ("weights.safetensors", weights)):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_copy_seconds(source: Path, directory: Path) -> float:
    started = time.perf_counter()
    target = directory / "copy.tar"
    shutil.copyfile(source, target)
    with open(target, "rb") as copied:
        os.fsync(copied.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def user_space_copy_seconds(source: Path, directory: Path) -> float:
    """The same bytes read into this process and written out, 1 MiB at a time, then
    fsynced: what any receiver that gets them from a socket must do at least (the kernel's
    own copy above never brings them into user space)."""
    started = time.perf_counter()
    target = directory / "copy.tar"
    with open(source, "rb") as stream, open(target, "wb") as out:
        while block := stream.read(1024 * 1024):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def upload_seconds(base: str, job_id: int, token: str, source: Path, digest: str) -> float:
    def chunks():
        with open(source, "rb") as stream:
            while block := stream.read(1024 * 1024):
                yield block

    started = time.perf_counter()
    answer = httpx.put(
        f"{base}/runs/{job_id}/checkpoint",
        params={"attempt": 1},
        headers={"Authorization": f"Bearer {token}", "X-Content-SHA256": digest},
        content=chunks(),
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", default="64,256")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distlm-uploads-") as scratch:
        root = Path(scratch)
        database_url = f"sqlite:///{root / 'distlm.db'}"
        upgrade_to_head(database_url)
        job_id = running_job(database_url)
        token = create_run_token(
            RunClaims(job_id, 1, 1), secret_key=SECRET, expires_in=dt.timedelta(hours=1)
        )
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "backend"),
            "DISTLM_DATABASE_URL": database_url,
            "DISTLM_STORAGE_PATH": str(root / "storage"),
            "DISTLM_SECRET_KEY": SECRET,
            "DISTLM_MAX_UPLOAD_MB": "100000",
        }
        code = (
            "import uvicorn; from app.main import create_app; "
            f"uvicorn.run(create_app(dispatch=False), host='127.0.0.1', port={port}, "
            "log_level='warning')"
        )
        server = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=root)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):  # the app starts in a few seconds; bounded
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            print(
                "| checkpoint | kernel copy MB/s | user-space copy MB/s | upload MB/s "
                "| upload / kernel copy | upload / user-space copy |"
            )
            print("|---|---|---|---|---|---|")
            for megabytes in (int(m) for m in args.mb.split(",")):
                source = root / f"checkpoint-{megabytes}.tar"
                digest = checkpoint_tar(source, megabytes)
                size_mb = source.stat().st_size / 1024 / 1024
                copy = min(local_copy_seconds(source, root) for _ in range(args.repeat))
                user = min(user_space_copy_seconds(source, root) for _ in range(args.repeat))
                upload = min(
                    upload_seconds(base, job_id, token, source, digest) for _ in range(args.repeat)
                )
                print(
                    f"| {megabytes} MB | {size_mb / copy:.0f} | {size_mb / user:.0f} "
                    f"| {size_mb / upload:.0f} | {copy / upload:.2f}x | {user / upload:.2f}x |"
                )
                source.unlink()
                report("uploads", f"{megabytes} MB checkpoint upload", size_mb / upload,
                       unit="MB/s", baseline=size_mb / copy, baseline_name="kernel copy",
                       aim=">= 0.5")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
