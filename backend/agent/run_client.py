"""A job's driver talking to the gateway's /runs with its run credential: its events, its
uploads (checkpoint, model, results as tars, sha256 sent ahead) and the download of the last
accepted checkpoint. Network trouble is retried for a while (a link that comes back loses
nothing); a refusal is final."""

from __future__ import annotations

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
        with tempfile.TemporaryDirectory(prefix="distlm-checkpoint-") as scratch:
            archive = Path(scratch) / "checkpoint.tar"

            def fetch() -> httpx.Response:
                with self.http.stream(
                    "GET", f"/runs/{self.job_id}/checkpoint", params={"attempt": self.attempt}
                ) as response:
                    if response.status_code == 200:
                        with open(archive, "wb") as out:
                            for chunk in response.iter_bytes(CHUNK):
                                out.write(chunk)
                    else:
                        response.read()
                    return response

            response = self._retrying(fetch, missing_ok=True)
            for stale in (
                into,
                into.with_name(into.name + ".old"),
                into.with_name(into.name + ".tmp"),
            ):
                shutil.rmtree(stale, ignore_errors=True)
            if response.status_code == 404:
                return False
            if file_sha256(archive) != response.headers.get("X-Content-SHA256"):
                raise RunRefusedError(502, "the checkpoint arrived damaged (sha256 differs)")
            staging = into.with_name(into.name + ".tmp")
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
