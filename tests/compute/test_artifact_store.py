"""The gateway's artifact store: uploads from untrusted nodes land whole or not at all."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from compute.storage import artifact_store
from compute.storage.artifact_store import (
    UploadRejectedError,
    UploadTooLargeError,
    accepted_directory,
    pack_directory,
)
from compute.storage.directory_upload import DirectoryUpload

CONTENT = b"model weights " * 100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def tree_of(root: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes (None for a directory) of everything under ``root``."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        assert not path.is_symlink(), path
        found[path.relative_to(root).as_posix()] = path.read_bytes() if path.is_file() else None
    return found


# --- unpacking an upload (compute.storage.directory_upload over extract_stream) ----------------


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special_member(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, None


def write_archive(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = False
) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buffer.getvalue()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


OLD_TREE = {"stale.txt": b"old", "sub": None, "sub/old.bin": b"old weights"}


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    """An accepted checkpoint directory that a refused archive must leave alone."""
    destination = tmp_path / "store" / "checkpoint"
    (destination / "sub").mkdir(parents=True)
    (destination / "stale.txt").write_bytes(b"old")
    (destination / "sub" / "old.bin").write_bytes(b"old weights")
    return destination


def assert_unchanged(destination: Path) -> None:
    assert tree_of(destination) == OLD_TREE
    assert [p.name for p in destination.parent.iterdir()] == [destination.name]  # no leftovers


def unpack(archive: Path, destination: Path, *, max_bytes: int = 10**6, max_members: int = 100):
    """The archive as an upload's body, in chunks, through the gateway's receiving path
    (``max_bytes`` bounds the files it unpacks to; the body itself is allowed)."""
    body = archive.read_bytes()
    with DirectoryUpload(
        destination,
        expected_sha256=sha(body),
        max_bytes=max(len(body), 1),
        max_members=max_members,
        max_unpacked_bytes=max_bytes,
    ) as upload:
        for chunk in chunked(body, 4096):
            upload.write(chunk)
        upload.commit()


GOOD = [file_member("ok.txt", b"fine")]
BAD_MEMBERS = {
    "parent": [*GOOD, file_member("../x", b"escape")],
    "nested parent": [*GOOD, file_member("a/../../x", b"escape")],
    # Made absolute under tmp_path by the test, so that a regression cannot write to /etc.
    "absolute": [*GOOD, file_member("ESCAPED/x", b"escape")],
    "symlink": [*GOOD, special_member("link", tarfile.SYMTYPE, "/etc/passwd")],
    "relative symlink": [*GOOD, special_member("link", tarfile.SYMTYPE, "ok.txt")],
    "hardlink": [*GOOD, special_member("hard", tarfile.LNKTYPE, "ok.txt")],
    "fifo": [*GOOD, special_member("pipe", tarfile.FIFOTYPE)],
    "char device": [*GOOD, special_member("null", tarfile.CHRTYPE)],
    "block device": [*GOOD, special_member("disk", tarfile.BLKTYPE)],
    "duplicate": [*GOOD, file_member("ok.txt", b"again")],
    "file then dir": [*GOOD, file_member("ok.txt/inner", b"x")],
}


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("case", list(BAD_MEMBERS))
def test_an_unsafe_member_is_refused_with_nothing_changed(
    tmp_path: Path, destination: Path, case: str, gz: bool
) -> None:
    escaped = tmp_path / "escaped"
    members = [(copy.copy(info), data) for info, data in BAD_MEMBERS[case]]
    for info, _ in members:
        info.name = info.name.replace("ESCAPED", str(escaped))
    archive = write_archive(tmp_path / "upload.tar", members, gz=gz)

    with pytest.raises(UploadRejectedError, match="archive member") as raised:
        unpack(archive, destination)

    assert raised.value.code == "bad_archive_member"
    assert_unchanged(destination)
    assert not escaped.exists()


def test_too_many_members_are_refused(tmp_path: Path, destination: Path) -> None:
    members = [file_member(f"f{i}", b"x") for i in range(4)]
    archive = write_archive(tmp_path / "upload.tar", members)

    with pytest.raises(UploadTooLargeError, match="more than 3 members"):
        unpack(archive, destination, max_members=3)
    assert_unchanged(destination)

    unpack(archive, destination, max_members=4)  # exactly at the limit is allowed
    assert len(tree_of(destination)) == 4


def test_too_many_bytes_are_refused(tmp_path: Path, destination: Path) -> None:
    archive = write_archive(
        tmp_path / "upload.tar", [file_member(f"f{i}", b"x" * 10) for i in range(3)]
    )

    with pytest.raises(UploadTooLargeError, match="more than 29 bytes"):
        unpack(archive, destination, max_bytes=29)
    assert_unchanged(destination)

    unpack(archive, destination, max_bytes=30)  # exactly at the limit is allowed
    assert tree_of(destination) == {f"f{i}": b"x" * 10 for i in range(3)}


def test_a_gzip_that_inflates_into_a_huge_header_is_refused_without_reading_it(
    tmp_path: Path, destination: Path
) -> None:
    # A pax header declaring 8 MB, which tarfile would read into memory whole; zeros
    # compress to almost nothing.
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 8 * 1024 * 1024
    raw = header.tobuf(tarfile.USTAR_FORMAT) + bytes(header.size) + bytes(1024)
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(raw, compresslevel=1))

    with pytest.raises(UploadTooLargeError, match="unpacks to more than"):
        unpack(archive, destination, max_bytes=1024 * 1024, max_members=10)
    assert_unchanged(destination)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a tar at all" * 100, gzip.compress(b"not a tar at all" * 100), b"\x1f\x8bbroken"],
    ids=["empty", "garbage", "gzip of garbage", "broken gzip"],
)
def test_something_that_is_not_a_tar_is_refused(
    tmp_path: Path, destination: Path, content: bytes
) -> None:
    archive = tmp_path / "upload.tar"
    archive.write_bytes(content)

    with pytest.raises(UploadRejectedError, match="not a valid tar archive"):
        unpack(archive, destination)
    assert_unchanged(destination)


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_an_archive_cut_inside_a_file_is_refused(
    tmp_path: Path, destination: Path, gz: bool
) -> None:
    whole = write_archive(tmp_path / "whole.tar", [file_member("big.bin", os.urandom(5000))])
    raw = whole.read_bytes()[:3000]
    archive = tmp_path / "cut.tar"
    archive.write_bytes(gzip.compress(raw) if gz else raw)

    with pytest.raises(UploadRejectedError, match="not a valid tar archive"):
        unpack(archive, destination)
    assert_unchanged(destination)


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_a_valid_archive_replaces_the_accepted_directory_completely(
    tmp_path: Path, destination: Path, gz: bool
) -> None:
    members = [
        file_member("./weights.bin", b"new weights"),
        special_member("sub", tarfile.DIRTYPE),
        file_member("sub/new.json", b"{}"),
        file_member("deep/er/state.json", b'{"step": 3}'),
    ]
    archive = write_archive(tmp_path / "upload.tar", members, gz=gz)

    unpack(archive, destination)

    assert tree_of(destination) == {
        "deep": None,
        "deep/er": None,
        "deep/er/state.json": b'{"step": 3}',
        "sub": None,
        "sub/new.json": b"{}",
        "weights.bin": b"new weights",
    }
    assert [p.name for p in destination.parent.iterdir()] == [destination.name]
    assert accepted_directory(destination) == destination


def test_a_crash_between_move_aside_and_move_in_leaves_the_old_copy_readable(
    tmp_path: Path, destination: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_archive(tmp_path / "upload.tar", [file_member("new.bin", b"new")])
    real_replace = os.replace
    calls = 0

    def crash_on_second_call(source: Path, target: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("simulated crash before the new directory moved in")
        real_replace(source, target)

    monkeypatch.setattr(artifact_store.os, "replace", crash_on_second_call)
    with pytest.raises(OSError, match="simulated crash"):
        unpack(archive, destination)
    monkeypatch.undo()

    assert calls == 2
    assert not destination.exists()
    found = accepted_directory(destination)
    assert found == destination.with_name("checkpoint.old")
    assert tree_of(found) == OLD_TREE
    assert [p.name for p in destination.parent.iterdir()] == ["checkpoint.old"]

    # The next upload recovers: the new copy moves in and the old one goes.
    unpack(archive, destination)
    assert accepted_directory(destination) == destination
    assert tree_of(destination) == {"new.bin": b"new"}
    assert [p.name for p in destination.parent.iterdir()] == [destination.name]


def test_a_crash_after_move_in_leaves_the_new_copy_accepted(
    tmp_path: Path, destination: Path
) -> None:
    leftover = destination.with_name("checkpoint.old")
    leftover.mkdir()
    (leftover / "older.bin").write_bytes(b"older")

    assert accepted_directory(destination) == destination

    unpack(write_archive(tmp_path / "upload.tar", GOOD), destination)
    assert tree_of(destination) == {"ok.txt": b"fine"}
    assert [p.name for p in destination.parent.iterdir()] == [destination.name]


def test_nothing_accepted_yet(tmp_path: Path) -> None:
    assert accepted_directory(tmp_path / "checkpoint") is None


# --- pack -> receive -> unpack ----------------------------------------------------------------


def make_model_directory(root: Path) -> Path:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "model.safetensors").write_bytes(os.urandom(300_000))
    (root / "config.json").write_text('{"layers": 2}')
    (root / "empty.txt").write_bytes(b"")
    (root / "nested" / "deeper" / ("long name " * 20).strip()).write_bytes(os.urandom(1000))
    (root / "nested" / "ünïcode.txt").write_text("ok")
    return root


def test_pack_then_upload_reproduces_the_directory_byte_for_byte(tmp_path: Path) -> None:
    source = make_model_directory(tmp_path / "node" / "model")
    packed = io.BytesIO()
    digest = pack_directory(source, packed)
    assert digest == sha(packed.getvalue())

    archive = tmp_path / "model.tar"
    archive.write_bytes(packed.getvalue())
    destination = tmp_path / "gateway" / "jobs" / "7" / "model"
    destination.parent.mkdir(parents=True)
    unpack(archive, destination, max_bytes=400_000, max_members=10)

    assert tree_of(destination) == tree_of(source)


def test_packing_is_deterministic(tmp_path: Path) -> None:
    source = make_model_directory(tmp_path / "model")
    first = pack_directory(source, io.BytesIO())
    os.utime(source / "config.json", (1, 1))
    (source / "config.json").chmod(0o600)

    assert pack_directory(source, io.BytesIO()) == first


def test_packing_refuses_a_symlink(tmp_path: Path) -> None:
    source = make_model_directory(tmp_path / "model")
    (source / "link").symlink_to(source / "config.json")

    with pytest.raises(ValueError, match="neither a regular file nor a directory"):
        pack_directory(source, io.BytesIO())
