"""No shared disk: what a run saves goes to the gateway, what it resumes from comes from it.

``RunClient`` is the gateway's /runs with an attempt's run credential: events, uploads
(checkpoint, model, results as tars, sha256 sent ahead) and downloads (the last accepted
checkpoint, a source job's model). ``publish_directory`` is called by whichever worker wrote a
directory, on its own node, before the event that names it; ``fetch_inputs`` by whichever
reads the checkpoint or source model, on its node, once per attempt. Network trouble is
retried for a while (a link that comes back loses nothing); a refusal is final."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from protocol.events import RecordedEvent
from protocol.run import PublishTarget, RunConfig
from protocol.wire import recorded_to_wire

log = logging.getLogger("distlm.driver")

MAX_EVENTS_PER_POST = 500
CHUNK = 1024 * 1024
T = TypeVar("T")


class RunRefusedError(Exception):
    """The gateway refused the attempt (it ended, or the credential is not for it)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status


class RunClient:
    def __init__(
        self,
        gateway_url: str,
        token: str,
        job_id: int,
        attempt: int,
        *,
        retry_for_s: float = 300.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.job_id, self.attempt, self.retry_for_s = job_id, attempt, retry_for_s
        self.http = httpx.Client(
            base_url=gateway_url,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self.http.close()

    def post_events(self, events: Sequence[RecordedEvent]) -> bool:
        """Send events in order (an empty list asks only); True when the job's owner asked
        to cancel."""
        cancel = False
        batches = [events[i : i + MAX_EVENTS_PER_POST] for i in range(0, len(events), 500)]
        for batch in batches or [[]]:
            body = {"attempt": self.attempt, "events": [recorded_to_wire(r) for r in batch]}
            answer = self._retrying(
                lambda body=body: self.http.post(f"/runs/{self.job_id}/events", json=body)
            )
            cancel = bool(answer.json().get("cancel_requested"))
        return cancel

    def upload_directory(self, kind: str, directory: Path) -> None:
        """``directory`` as a tar to /runs/{job}/{kind}: packed to a temporary file first, so
        that its sha256 goes ahead of the body and a retry sends the same bytes."""
        with tempfile.TemporaryDirectory(prefix="distlm-upload-") as scratch:
            archive = Path(scratch) / f"{kind}.tar"
            with tarfile.open(archive, "w") as tar:
                for path in sorted(directory.rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
            digest = file_sha256(archive)

            def send() -> httpx.Response:
                return self.http.put(
                    f"/runs/{self.job_id}/{kind}",
                    params={"attempt": self.attempt},
                    headers={"X-Content-SHA256": digest, "Content-Type": "application/x-tar"},
                    content=file_chunks(archive),
                )

            self._retrying(send)

    def download_checkpoint(self, into: Path) -> bool:
        """The last accepted checkpoint, unpacked into ``into`` (replacing what is there);
        False when the job has none yet (then nothing local is kept either: only what the
        gateway accepted may be resumed from)."""
        return self.download_directory("checkpoint", into)

    def download_source_model(self, into: Path) -> None:
        """The trained model the job starts from (``job:<id>``), unpacked into ``into``."""
        if not self.download_directory("source-model", into):
            raise RunRefusedError(404, "the gateway has no model for this job to start from")

    def download_directory(self, what: str, into: Path) -> bool:
        """GET /runs/{job}/{what} (a tar), checked against its sha256 and unpacked into
        ``into`` whole; False (and nothing left at ``into``) when there is none."""
        with tempfile.TemporaryDirectory(prefix="distlm-download-") as scratch:
            archive = Path(scratch) / f"{what}.tar"

            def fetch() -> httpx.Response:
                path = f"/runs/{self.job_id}/{what}"
                with self.http.stream("GET", path, params={"attempt": self.attempt}) as answer:
                    if answer.status_code == 200:
                        with open(archive, "wb") as out:
                            for chunk in answer.iter_bytes(CHUNK):
                                out.write(chunk)
                    else:
                        answer.read()
                    return answer

            response = self._retrying(fetch, missing_ok=True)
            siblings = (into.with_name(into.name + ".old"), into.with_name(into.name + ".tmp"))
            for stale in (into, *siblings):
                shutil.rmtree(stale, ignore_errors=True)
            if response.status_code == 404:
                return False
            if file_sha256(archive) != response.headers.get("X-Content-SHA256"):
                raise RunRefusedError(502, f"the {what} arrived damaged (sha256 differs)")
            staging = siblings[1]
            staging.mkdir(parents=True)
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
            staging.rename(into)
            return True

    def _retrying(self, call: Callable[[], T], *, missing_ok: bool = False) -> T:
        """Retry network errors and 5xx/429 for ``retry_for_s``; raise on a refusal."""
        deadline = time.monotonic() + self.retry_for_s
        pause = 0.5
        while True:
            try:
                response: Any = call()
            except httpx.HTTPError as error:
                problem = f"gateway unreachable: {error or type(error).__name__}"
            else:
                status = response.status_code
                if response.is_success or (missing_ok and status == 404):
                    return response
                if status < 500 and status != 429:
                    raise RunRefusedError(status, _detail(response))
                problem = f"gateway answered {status}"
            if time.monotonic() > deadline:
                raise ConnectionError(f"gave up after {self.retry_for_s:g} s: {problem}")
            log.warning("job %s: %s; retrying in %g s", self.job_id, problem, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except (ValueError, AttributeError):
        return response.text[:200]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


SOURCE_PREFIX = "job:"  # a model trained by an earlier job, fetched from the gateway
SOURCE_MODEL_DIR = "source-model"
CHECKPOINT_DIR = "checkpoint"


def client_for(target: PublishTarget) -> RunClient:
    return RunClient(target.url, target.run_token, target.job_id, target.attempt)


def publish_directory(target: PublishTarget | None, kind: str, directory: str | Path) -> None:
    """Upload a directory this node just wrote (``kind``: checkpoint, model, results) before
    the event that names it is sent; nothing to do where the storage is shared (None)."""
    if target is None:
        return
    client = client_for(target)
    try:
        client.upload_directory(kind, Path(directory))
    finally:
        client.close()


def fetch_inputs(config: RunConfig) -> RunConfig:
    """What this attempt reads, on this node, once (workers of one node share it): the
    gateway's last accepted checkpoint (or none: nothing unaccepted is resumed from) and the
    model of a source job (then ``model_name`` becomes its local directory)."""
    target = config.publish
    if target is None:
        return config
    job_dir = Path(config.job_dir)
    source = job_dir / SOURCE_MODEL_DIR
    starts_from_job = config.model.model_name.startswith(SOURCE_PREFIX)
    job_dir.mkdir(parents=True, exist_ok=True)
    with open(job_dir / ".fetch.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = job_dir / f".fetched-attempt-{config.attempt}"
        if not marker.exists():
            client = client_for(target)
            try:
                client.download_checkpoint(job_dir / CHECKPOINT_DIR)
                if starts_from_job:
                    client.download_source_model(source)
            finally:
                client.close()
            marker.touch()
    if not starts_from_job:
        return config
    model = dataclasses.replace(config.model, model_name=str(source))
    return dataclasses.replace(config, request=dataclasses.replace(config.request, model=model))
