"""The gateway's side of "no shared filesystem": checkpoints, final models and results that
nodes upload over HTTP land here. Nodes are untrusted, so nothing received is unpickled or
trusted as a path, every upload is size-limited and sha256-checked, and what was accepted
before is only ever replaced whole (a crash at any moment leaves one whole copy behind).

A directory (a checkpoint, a saved model, results) arrives as one tar, plain or gzip, which
``directory_upload`` unpacks as it arrives with ``extract_stream`` (every member checked) and
swaps in with ``swap_in_directory``; ``pack_directory`` makes such a tar of what is stored.
Plain stdlib on purpose: no web framework, database or Ray.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from core.errors import InvalidInputError, PayloadTooLargeError

COPY_CHUNK_BYTES = 1024 * 1024
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
GZIP_MAGIC = b"\x1f\x8b"
# What a tar may hold besides its files' bytes: per member a header, its padding and a long
# name (pax or GNU), and the end-of-archive records. Bounds a gzip that inflates into huge
# headers, which tarfile would read into memory.
TAR_OVERHEAD_PER_MEMBER = 8 * 1024
TAR_OVERHEAD_FIXED = 64 * 1024
ALLOWED_MEMBER_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


class UploadRejectedError(InvalidInputError):
    """What a node sent cannot be accepted (wrong hash, bad archive...); nothing changed."""

    code = "upload_rejected"


class UploadTooLargeError(UploadRejectedError, PayloadTooLargeError):
    """The upload, or what its archive would unpack to, is over its limit."""

    code = "upload_too_large"


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    sha256: str


def normalized_sha256(value: str) -> str:
    """The lower-case hex digest, or an error when ``value`` is not one."""
    digest = value.strip().lower()
    if not SHA256_HEX.fullmatch(digest):
        raise UploadRejectedError(
            f"expected_sha256 must be 64 hexadecimal characters, not {value[:80]!r}",
            code="bad_sha256",
        )
    return digest


def accepted_directory(destination: Path) -> Path | None:
    """The last whole directory accepted at ``destination``: itself, or the previous version
    a crash left aside while swapping in a new one, or None."""
    if destination.is_dir():
        return destination
    previous = aside_path(destination)
    return previous if previous.is_dir() else None


def aside_path(destination: Path) -> Path:
    return destination.with_name(destination.name + ".old")


def fsync_directory(directory: Path) -> None:
    """Makes the renames and creations inside ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def pack_directory(directory: Path, out: BinaryIO) -> str:
    """Writes ``directory`` to ``out`` as the uncompressed tar ``unpack_directory_archive``
    takes, and returns the sha256 of what it wrote. Deterministic: sorted paths, no owners
    or times, fixed modes, so the same files give the same bytes. Anything but regular files and
    directories (a symlink, a socket) is refused rather than silently left out.

    Uncompressed because weights barely compress and gzip would cost the node's CPU. The node
    side will take this from the shared protocol package (issue 20, item 8) once it exists."""
    hashing = HashingWriter(out)
    with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted_tree(directory):
            add_to_archive(archive, path, path.relative_to(directory).as_posix())
    return hashing.hasher.hexdigest()


class HashingWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hasher = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        return self.out.write(data)


def sorted_tree(directory: Path) -> list[Path]:
    """Every path under ``directory``, parents before children, in name order."""
    found: list[Path] = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        found.append(entry)
        if entry.is_dir() and not entry.is_symlink():
            found.extend(sorted_tree(entry))
    return found


def add_to_archive(archive: tarfile.TarFile, path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    if path.is_symlink() or not (path.is_file() or path.is_dir()):
        raise ValueError(f"{path} is neither a regular file nor a directory")
    if path.is_dir():
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        archive.addfile(info)
        return
    info.mode = 0o644
    with open(path, "rb") as file:
        info.size = os.fstat(file.fileno()).st_size
        archive.addfile(info, file)


STREAM_BUFFER_BYTES = 1024 * 1024  # tar's stream reads (its default, 10 KiB, costs a call each)


def extract_stream(
    raw: BinaryIO, compressed: bool, into: Path, *, max_bytes: int, max_members: int
) -> None:
    """Extract a tar read once from ``raw`` (no seeking: a file, or bytes still arriving)."""
    overhead = TAR_OVERHEAD_FIXED + TAR_OVERHEAD_PER_MEMBER * (max_members + 1)
    source: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    bounded = BoundedReader(source, limit=max_bytes + overhead)
    try:
        # Stream mode: one pass, no seeking (a gzip would be inflated again per seek).
        with tarfile.open(fileobj=bounded, mode="r|", bufsize=STREAM_BUFFER_BYTES) as tar:
            extract_members(tar, into, max_bytes=max_bytes, max_members=max_members)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise UploadRejectedError(
            f"the upload is not a valid tar archive: {error}", code="bad_archive"
        ) from None


class BoundedReader:
    """Reads from ``source`` but refuses to hand out more than ``limit`` bytes in all."""

    def __init__(self, source: BinaryIO, *, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.handed_out = 0

    def read(self, size: int = -1) -> bytes:
        allowed = self.limit - self.handed_out
        data = self.source.read(allowed + 1 if size < 0 or size > allowed else size)
        self.handed_out += len(data)
        if self.handed_out > self.limit:
            raise UploadTooLargeError(
                f"the archive unpacks to more than {self.limit} bytes of files and headers"
            )
        return data


def extract_members(tar: tarfile.TarFile, into: Path, *, max_bytes: int, max_members: int) -> None:
    total_bytes = 0
    for count, member in enumerate(tar, start=1):
        if count > max_members:
            raise UploadTooLargeError(f"the archive has more than {max_members} members")
        relative = checked_member_path(member, into)
        total_bytes += member.size if member.isreg() else 0
        if total_bytes > max_bytes:
            raise UploadTooLargeError(f"the archive's files hold more than {max_bytes} bytes")
        try:
            write_member(tar, member, into / relative)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG):
                raise  # the gateway's own trouble (a full disk), not the upload's
            raise UploadRejectedError(
                f"archive member {member.name!r} cannot be created: it repeats a name, is "
                "both a file and a directory, or its name is too long",
                code="bad_archive_member",
            ) from None


def checked_member_path(member: tarfile.TarInfo, into: Path) -> PurePosixPath:
    """The member's path relative to the archive's root, or an error when it is anything but
    a regular file or directory strictly inside it."""
    if member.type not in ALLOWED_MEMBER_TYPES or member.sparse is not None:
        raise bad_member(member, "is not a regular file or directory (a link, device or fifo)")
    path = PurePosixPath(member.name)
    if path.is_absolute():
        raise bad_member(member, "has an absolute path")
    if ".." in path.parts:
        raise bad_member(member, "has '..' in its path")
    if not path.parts and member.isreg():
        raise bad_member(member, "is a file without a name")
    # A second opinion from tarfile's own "data" filter (3.12, backported to 3.11.4).
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(member, str(into))
        except tarfile.FilterError as error:
            raise bad_member(member, f"is refused by tarfile's data filter ({error})") from None
    return path


def bad_member(member: tarfile.TarInfo, why: str) -> UploadRejectedError:
    return UploadRejectedError(f"archive member {member.name!r} {why}", code="bad_archive_member")


def write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """Creates one checked member; "x" mode never follows or overwrites anything."""
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has contents
    with open(target, "xb") as out:
        shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
        out.flush()
        os.fsync(out.fileno())


def fsync_tree(root: Path) -> None:
    """Makes the directory entries under ``root`` durable (the files were synced as written)."""
    for directory, _, _ in os.walk(root, topdown=False):
        fsync_directory(Path(directory))


def swap_in_directory(incoming: Path, destination: Path) -> None:
    """Replaces ``destination`` with ``incoming`` so that a crash at any point leaves a whole
    copy that ``accepted_directory`` finds: the old one moves aside, the new one moves in,
    then the old one goes. (The same idea as ``ray_module.storage.directories``, which the
    control plane must not import.)"""
    previous = aside_path(destination)
    if previous.exists() and destination.exists():
        shutil.rmtree(previous)  # a crash after an earlier move-in left it behind
    if destination.exists():
        os.replace(destination, previous)
    os.replace(incoming, destination)
    fsync_directory(destination.parent)
    shutil.rmtree(previous, ignore_errors=True)
