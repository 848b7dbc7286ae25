"""A directory (checkpoint, model, results) unpacked while its tar arrives.

The request body is hashed and fed to an extractor thread as it comes, so every byte is
written once (into a fresh directory beside the destination) instead of being stored as an
archive, read again and unpacked. Nothing is swapped in until the whole body has arrived and
hashes to what the driver declared; any failure (a wrong hash, a bad member, too many bytes,
the client gone) removes the fresh directory and leaves the accepted one as it was.
"""

from __future__ import annotations

import hashlib
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from compute.artifact_store import (
    GZIP_MAGIC,
    StoredFile,
    UploadRejectedError,
    UploadTooLargeError,
    extract_stream,
    fsync_tree,
    normalized_sha256,
    swap_in_directory,
)

PIPE_CHUNKS = 16  # chunks buffered between the receiver and the extractor (backpressure)


class ChunkPipe:
    """A read-once file fed chunk by chunk from another thread. Once the reader gives up
    (``abandon``), feeding is a no-op, so the receiver never blocks on a dead extractor."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=PIPE_CHUNKS)
        self.buffer = bytearray()
        self.ended = False
        self.abandoned = threading.Event()

    def feed(self, chunk: bytes | None) -> None:
        while not self.abandoned.is_set():
            try:
                self.chunks.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def abandon(self) -> None:
        self.abandoned.set()

    def peek(self, size: int) -> bytes:
        self._fill(size)
        return bytes(self.buffer[:size])

    def read(self, size: int = -1) -> bytes:
        self._fill(size)
        if size < 0 or size >= len(self.buffer):
            data, self.buffer = bytes(self.buffer), bytearray()
        else:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
        return data

    def _fill(self, size: int) -> None:
        while not self.ended and (size < 0 or len(self.buffer) < size):
            try:
                chunk = self.chunks.get(timeout=0.5)
            except queue.Empty:
                if self.abandoned.is_set():  # the receiver gave up: end the extractor
                    raise UploadRejectedError(
                        "the upload ended before its archive did", code="bad_archive"
                    ) from None
                continue
            if chunk is None:
                self.ended = True
            else:
                self.buffer.extend(chunk)


class DirectoryUpload:
    """``write`` the body's chunks (from a worker thread: it blocks while the extractor
    catches up), then ``commit`` to swap the directory in; leaving the ``with`` block without
    a commit discards it."""

    def __init__(
        self, destination: Path, *, expected_sha256: str, max_bytes: int, max_members: int
    ) -> None:
        self.expected = normalized_sha256(expected_sha256)
        self.destination = destination
        self.max_bytes = max_bytes
        self.size = 0
        self.hasher = hashlib.sha256()
        self.pipe = ChunkPipe()
        self.error: BaseException | None = None
        self.done = False
        destination.parent.mkdir(parents=True, exist_ok=True)
        self.incoming = Path(
            tempfile.mkdtemp(
                dir=destination.parent, prefix=f".{destination.name}.", suffix=".incoming"
            )
        )
        self.extractor = threading.Thread(
            target=self._extract, args=(max_members,), name="unpack", daemon=True
        )
        self.extractor.start()

    def _extract(self, max_members: int) -> None:
        try:
            compressed = self.pipe.peek(len(GZIP_MAGIC)) == GZIP_MAGIC
            extract_stream(
                self.pipe, compressed, self.incoming,
                max_bytes=self.max_bytes, max_members=max_members,
            )  # fmt: skip
            while self.pipe.read(1024 * 1024):  # what follows the archive's end: hashed only
                pass
        except BaseException as error:  # handed to the receiving thread
            self.error = error
        finally:
            self.pipe.abandon()

    def write(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self.size + len(chunk) > self.max_bytes:
            raise UploadTooLargeError(f"the upload is larger than {self.max_bytes} bytes")
        self.size += len(chunk)
        self.hasher.update(chunk)
        self.pipe.feed(chunk)

    def commit(self) -> StoredFile:
        """The whole body arrived: check its hash and swap the directory in (the caller
        serializes commits to one destination)."""
        self.pipe.feed(None)
        self.extractor.join()
        if self.error is not None:
            raise self.error
        received = self.hasher.hexdigest()
        if received != self.expected:
            raise UploadRejectedError(
                f"the upload does not match its sha256: expected {self.expected}, the "
                f"{self.size} bytes received hash to {received}",
                code="sha256_mismatch",
            )
        fsync_tree(self.incoming)
        swap_in_directory(self.incoming, self.destination)
        self.done = True
        return StoredFile(self.destination, self.size, received)

    def __enter__(self) -> DirectoryUpload:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.done:
            self.pipe.abandon()
            self.extractor.join(timeout=30)
            shutil.rmtree(self.incoming, ignore_errors=True)
