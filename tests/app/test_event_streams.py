"""Event streams cannot starve the gateway (issue 24, item 1): the probe's 80 parallel
`GET /jobs/{id}/events` of one user made others' requests take over 12 s and gave 500s.
A real gateway on a port: each user gets a few streams, the process a bounded number (429
beyond), others' requests go on meanwhile, and a viewer who may no longer see the job has
their stream ended."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from app.main import create_app
from auth.models import Role
from tests.conftest import SEED_JOB, clear_tables, free_port, make_settings
from tests.live_gateway import LiveGateway
from tests.polling import wait_for

PER_USER, TOTAL = 2, 3


@pytest.fixture
def gateway(database_url: str) -> Iterator[LiveGateway]:
    settings = make_settings(database_url, max_streams_per_user=PER_USER, max_streams=TOTAL)
    clear_tables(database_url)
    served = LiveGateway(lambda: create_app(settings, dispatch=False), free_port()).start()
    yield served
    served.stop()
    clear_tables(database_url)


class OpenStream:
    """A stream held open on a thread of its own (a plain socket, so that closing it is
    prompt), until the server ends it or we close it."""

    def __init__(self, gateway: LiveGateway, headers: dict, job_id: int) -> None:
        self.status: int | None = None
        self.ended = threading.Event()
        self.opened = threading.Event()
        self.stopping = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=20)
        lines = [f"GET /jobs/{job_id}/events HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.opened.wait(20), "the stream did not answer"

    def run(self) -> None:
        try:
            head = self.sock.recv(4096)
            self.status = int(head.split(b" ", 2)[1]) if head else None
            self.opened.set()
            self.sock.settimeout(0.2)
            while not self.stopping.is_set():
                try:
                    if not self.sock.recv(65536):
                        return  # the server ended it
                except TimeoutError:
                    continue
        except OSError:
            pass
        finally:
            self.opened.set()
            self.ended.set()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_streams_are_capped_per_user_and_in_all_and_others_are_served_meanwhile(
    gateway: LiveGateway, make_account
) -> None:
    alice, bob, carol = (make_account(n) for n in ("alice", "bob", "carol"))
    jobs = {
        a.id: gateway.post("/jobs/submit", headers=a.headers, json=SEED_JOB).json()["id"]
        for a in (alice, bob, carol)
    }
    streams: list[OpenStream] = []
    try:
        for _ in range(PER_USER):
            streams.append(OpenStream(gateway, alice.headers, jobs[alice.id]))
        assert [s.status for s in streams] == [200] * PER_USER
        over = gateway.get(f"/jobs/{jobs[alice.id]}/events", headers=alice.headers)
        assert over.status_code == 429 and over.json()["error"] == "rate_limited"
        assert int(over.headers["retry-after"]) > 0
        streams.append(OpenStream(gateway, bob.headers, jobs[bob.id]))  # the last slot
        assert streams[-1].status == 200
        full = gateway.get(f"/jobs/{jobs[carol.id]}/events", headers=carol.headers)
        assert full.status_code == 429
        # With every stream slot taken, everyone else is served at once.
        started = time.monotonic()
        for _ in range(20):
            assert gateway.get("/auth/me", headers=carol.headers).status_code == 200
        assert time.monotonic() - started < 10  # twenty requests; 12 s for one was the bug
        # A stream that ends gives its slot back.
        streams.pop().close()
        slots = gateway.app.state.stream_slots
        wait_for(lambda: sum(slots.open.values()) < TOTAL, timeout_s=10, what="a slot back")
        streams.append(OpenStream(gateway, carol.headers, jobs[carol.id]))
        assert streams[-1].status == 200
    finally:
        for stream in streams:
            stream.close()


def test_a_stream_ends_once_its_viewer_is_disabled(gateway: LiveGateway, make_account) -> None:
    alice = make_account("alice")
    admin = make_account("root", Role.ADMIN)
    job = gateway.post("/jobs/submit", headers=alice.headers, json=SEED_JOB).json()
    stream = OpenStream(gateway, alice.headers, job["id"])
    try:
        assert stream.status == 200 and not stream.ended.is_set()
        disabled = gateway.post(f"/users/{alice.id}/disable", headers=admin.headers, json={})
        assert disabled.status_code == 200
        assert stream.ended.wait(20), "the disabled user's stream kept flowing"
    finally:
        stream.close()


def test_a_stream_is_refused_to_someone_else(gateway: LiveGateway, make_account) -> None:
    alice, mallory = make_account("alice"), make_account("mallory", Role.USER)
    job = gateway.post("/jobs/submit", headers=alice.headers, json=SEED_JOB).json()
    assert gateway.get(f"/jobs/{job['id']}/events", headers=mallory.headers).status_code == 404
    # A refusal takes no slot: alice still has all of hers.
    streams = [OpenStream(gateway, alice.headers, job["id"]) for _ in range(PER_USER)]
    try:
        assert [s.status for s in streams] == [200] * PER_USER
    finally:
        for stream in streams:
            stream.close()
