"""A directory unpacked while its tar arrives: swapped in only whole and hash-checked; a
client gone mid-upload or a bad member leaves the accepted directory as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from compute.storage.artifact_store import UploadRejectedError, UploadTooLargeError
from compute.storage.directory_upload import DirectoryUpload
from tests.archives import tar_of


def chunks(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture
def accepted(tmp_path: Path) -> Path:
    destination = tmp_path / "checkpoint"
    destination.mkdir()
    (destination / "state.json").write_bytes(b'{"step": 10}')
    return destination


def upload(destination: Path, body: bytes, *, digest: str | None = None, max_bytes=10**7):
    return DirectoryUpload(
        destination,
        expected_sha256=digest or hashlib.sha256(body).hexdigest(),
        max_bytes=max_bytes,
        max_members=100,
    )


def test_a_whole_upload_replaces_the_directory(accepted: Path) -> None:
    body = tar_of({"state.json": b'{"step": 20}', "weights.bin": bytes(range(256)) * 400})
    with upload(accepted, body) as incoming:
        for chunk in chunks(body):
            incoming.write(chunk)
        stored = incoming.commit()
    assert stored.size == len(body)
    assert sorted(p.name for p in accepted.iterdir()) == ["state.json", "weights.bin"]
    assert (accepted / "weights.bin").read_bytes() == bytes(range(256)) * 400
    assert list(accepted.parent.glob(".checkpoint.*")) == []


def test_a_client_gone_mid_upload_changes_nothing(accepted: Path) -> None:
    body = tar_of({"state.json": b'{"step": 20}', "weights.bin": b"\x01" * 200_000})
    with upload(accepted, body) as incoming:
        for chunk in chunks(body)[:10]:  # then the connection drops: no commit
            incoming.write(chunk)
    assert (accepted / "state.json").read_bytes() == b'{"step": 10}'
    assert sorted(p.name for p in accepted.iterdir()) == ["state.json"]
    assert list(accepted.parent.glob(".checkpoint.*")) == []


def test_a_wrong_hash_is_refused_after_the_last_byte(accepted: Path) -> None:
    body = tar_of({"state.json": b'{"step": 20}'})
    with upload(accepted, body, digest="0" * 64) as incoming:
        for chunk in chunks(body):
            incoming.write(chunk)
        with pytest.raises(UploadRejectedError, match="does not match its sha256"):
            incoming.commit()
    assert (accepted / "state.json").read_bytes() == b'{"step": 10}'
    assert list(accepted.parent.glob(".checkpoint.*")) == []


def test_a_bad_member_stops_the_upload_early(accepted: Path) -> None:
    body = tar_of({"../escape": b"x", "big.bin": b"\x00" * 2_000_000})
    with upload(accepted, body) as incoming, pytest.raises(UploadRejectedError, match=r"'\.\.'"):
        for chunk in chunks(body):  # refused long before the last chunk
            incoming.write(chunk)
    assert not (accepted.parent / "escape").exists()
    assert sorted(p.name for p in accepted.iterdir()) == ["state.json"]


def test_more_bytes_than_the_limit_are_refused(accepted: Path) -> None:
    body = tar_of({"big.bin": b"\x00" * 50_000})
    with upload(accepted, body, max_bytes=20_000) as incoming, pytest.raises(UploadTooLargeError):
        for chunk in chunks(body):
            incoming.write(chunk)
    assert sorted(p.name for p in accepted.iterdir()) == ["state.json"]
