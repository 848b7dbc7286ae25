"""The Ray cluster the gateway runs jobs on, and the credential that admits nodes to it.

Joining a Ray cluster is full trust: any member can run code on every node, the gateway's
included. So the cluster's token is the trust boundary. On the embedded default the gateway
runs a Ray head of its own on this machine (``ray_module.head``: one per deployment, shared
by all its processes, started by the first and stopped by the last) with a token of its own
making, handed only to approved nodes. To shut a banned node out, the dispatcher restarts
that head with a new token (Ray's token is fixed for a cluster's life). Approved agents see
the new fingerprint in their next heartbeat answer, fetch the new token and rejoin; running
jobs resume from their last checkpoint.

A cluster this gateway joined (RAY_ADDRESS) belongs to its operator: the gateway cannot
restart it, and says so when a node is banned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import threading
from pathlib import Path

from core.errors import ConflictError
from ray_module.cluster import (
    ClusterConfig,
    cluster_auth_token,
    connect,
    disconnect,
    is_connected,
    new_auth_token,
)
from ray_module.head import HeadDirectory, HeadRecord, HeadUsers, head_alive, start_head, stop_head


class ClusterAccess:
    def __init__(self, config: ClusterConfig | None = None, head_dir: Path | None = None) -> None:
        self.config = config  # None: this gateway runs no Ray (tests, API-only processes)
        local = config is not None and not config.address
        self.head = HeadDirectory(head_dir) if local and head_dir is not None else None
        self.users = HeadUsers(self.head) if self.head is not None else None
        self._address = config.address if config is not None else ""
        self._auth_token = ""
        self._driver_token: str | None = None  # what this process's Ray driver connected with
        self._owns_driver = False  # False when someone else initialised Ray (tests)
        self._restarting = threading.Event()

    @classmethod
    def fixed(cls, address: str, auth_token: str = "") -> ClusterAccess:
        """A cluster someone else runs, as seen by a gateway that only hands out its
        address (tests of the join endpoint)."""
        access = cls()
        access._address, access._auth_token = address, auth_token
        return access

    # -- what nodes are told ------------------------------------------------------------
    def _record(self) -> HeadRecord | None:
        return self.head.read() if self.head is not None else None

    @property
    def address(self) -> str:
        if self.head is None:
            return self._address
        record = self._record()
        return record.address if record else ""

    @property
    def auth_token(self) -> str:
        if self.head is None:
            return self._auth_token
        record = self._record()
        return record.auth_token if record else ""

    @property
    def fingerprint(self) -> str:
        """Names the current credential without revealing it: agents compare it with the
        one they joined with and rejoin when it changed."""
        token = self.auth_token
        return hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""

    @property
    def restarting(self) -> bool:
        """The head is being replaced (by this process, or another one: no record then)."""
        return self._restarting.is_set() or (self.head is not None and self._record() is None)

    @property
    def rotatable(self) -> bool:
        return self.head is not None

    @property
    def started_at(self) -> dt.datetime | None:
        """When the cluster's current token was made (bans after it are not shut out)."""
        if self.head is None:
            return dt.datetime.now(dt.UTC) if self.config is not None else None
        record = self._record()
        return dt.datetime.fromtimestamp(record.started_at, dt.UTC) if record else None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Every gateway process: adopt this deployment's head, or start it if there is
        none (or it died). The Ray driver connects later, when this process leads."""
        if self.config is None:
            return
        if self.head is None:
            self._auth_token = cluster_auth_token()
            return
        assert self.users is not None
        with self.head.locked():
            record = self.head.read()
            if record is None or not head_alive(record):
                if record is not None:
                    stop_head(record)  # whatever is left of a head that died
                self.head.write(self._start_head())
            self.users.join()

    def _start_head(self) -> HeadRecord:
        assert self.config is not None and self.head is not None
        config = dataclasses.replace(self.config, auth_token=new_auth_token())
        return start_head(config, self.head)

    def connect_driver(self) -> None:
        """Connect this process to the cluster (again, if its token changed meanwhile)."""
        if self.config is None:
            return
        if self.head is None:
            if not is_connected():
                self._owns_driver = connect(self.config).owned
            return
        record = self._record()
        if record is None:
            raise ConflictError("the Ray head is restarting", code="cluster_restarting")
        if is_connected() and self._driver_token == record.auth_token:
            return
        disconnect()
        info = connect(
            ClusterConfig(
                address=record.address,
                auth_token=record.auth_token,
                namespace=self.config.namespace,
                local_head=True,
            )
        )
        self._owns_driver = info.owned
        self._driver_token = record.auth_token

    def rotate(self) -> None:
        """Replace the head with one that has a new token. Every actor on it is lost (the
        dispatcher re-queues their jobs); nodes holding only the old token cannot join."""
        if self.head is None:
            raise ConflictError("this gateway does not own its Ray cluster", code="no_rotation")
        self._restarting.set()
        try:
            with self.head.locked():
                old = self.head.read()
                self.head.clear()  # other processes answer /join with "restarting" meanwhile
                disconnect()
                if old is not None:
                    stop_head(old)
                self.head.write(self._start_head())
        finally:
            self._restarting.clear()
        self.connect_driver()

    def stop(self) -> None:
        """This process leaves; the last process of the deployment stops the head."""
        if self._owns_driver:
            disconnect()
            self._owns_driver = False
        if self.head is None or self.users is None:
            return
        with self.head.locked():
            if self.users.leave():
                record = self.head.read()
                if record is not None:
                    stop_head(record)
                self.head.clear()
