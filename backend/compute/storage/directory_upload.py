"""A directory (checkpoint, model, results) unpacked while its tar arrives.

The request body is hashed and fed to an extractor thread as it comes, so every byte is
written once (into a fresh directory beside the destination) instead of being stored as an
archive, read again and unpacked. Nothing is swapped in until the whole body has arrived and
hashes to what the driver declared; any failure (a wrong hash, a bad member, too many bytes,
the client gone) removes the fresh directory and leaves the accepted one as it was.
"""

from __future__ import annotations

import collections
import hashlib
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from compute.storage.artifact_store import (
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
    (``abandon``), feeding is a no-op, so the receiver never blocks on a dead extractor.
    Reads take slices of the chunks as they came (a queue of views, not one buffer whose
    front is cut at every read: that moved each byte again per read, capping an upload at
    ~160 MB/s)."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=PIPE_CHUNKS)
        self.pending: collections.deque[memoryview] = collections.deque()
        self.buffered = 0
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
        out = bytearray()
        for view in self.pending:
            out += view[: size - len(out)]
            if len(out) >= size:
                break
        return bytes(out)

    def read(self, size: int = -1) -> bytes:
        self._fill(size)
        wanted = self.buffered if size < 0 else min(size, self.buffered)
        if self.pending and len(self.pending[0]) >= wanted:  # the usual case: one slice
            head = self.pending.popleft()
            data, rest = head[:wanted], head[wanted:]
            if len(rest):
                self.pending.appendleft(rest)
            self.buffered -= wanted
            return bytes(data)
        out = bytearray()
        while len(out) < wanted:
            head = self.pending.popleft()
            take = min(len(head), wanted - len(out))
            out += head[:take]
            if take < len(head):
                self.pending.appendleft(head[take:])
        self.buffered -= wanted
        return bytes(out)

    def _fill(self, size: int) -> None:
        while not self.ended and (size < 0 or self.buffered < size):
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
            elif chunk:
                self.pending.append(memoryview(chunk))
                self.buffered += len(chunk)


class DirectoryUpload:
    """``write`` the body's chunks (from a worker thread: it blocks while the extractor
    catches up), then ``commit`` to swap the directory in; leaving the ``with`` block without
    a commit discards it."""

    def __init__(
        self,
        destination: Path,
        *,
        expected_sha256: str,
        max_bytes: int,
        max_members: int,
        max_unpacked_bytes: int | None = None,
    ) -> None:
        """``max_bytes`` bounds the body; ``max_unpacked_bytes`` (default: the same) the
        files it unpacks to (a gzip may inflate far beyond its body)."""
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
        self.max_unpacked_bytes = max_bytes if max_unpacked_bytes is None else max_unpacked_bytes
        self.extractor = threading.Thread(
            target=self._extract, args=(max_members,), name="unpack", daemon=True
        )
        self.extractor.start()

    def _extract(self, max_members: int) -> None:
        try:
            compressed = self.pipe.peek(len(GZIP_MAGIC)) == GZIP_MAGIC
            extract_stream(
                self.pipe, compressed, self.incoming,
                max_bytes=self.max_unpacked_bytes, max_members=max_members,
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
