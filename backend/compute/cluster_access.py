"""The Ray cluster the gateway runs jobs on, and the credential that admits nodes to it.

Joining a Ray cluster is full trust: any member can run code on every node, the gateway's
included. So the cluster's token is the trust boundary. On the embedded default the gateway
starts its local Ray with a token of its own making, handed only to approved nodes; to shut
a banned node out, the dispatcher restarts that Ray with a new token (Ray's token is fixed
for a cluster's life). Approved agents see the new fingerprint in their next heartbeat
answer, fetch the new token and rejoin; running jobs resume from their last checkpoint.

A cluster this gateway joined (RAY_ADDRESS) belongs to its operator: the gateway cannot
restart it, and says so when a node is banned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import threading

from core.db import utcnow
from core.errors import ConflictError
from ray_module.cluster import (
    ClusterConfig,
    ClusterInfo,
    cluster_auth_token,
    connect,
    disconnect,
    new_auth_token,
)


class ClusterAccess:
    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config  # None: this gateway runs no Ray (tests, API-only processes)
        self.address = ""
        self.auth_token = ""
        self.started_at: dt.datetime | None = None
        self.rotatable = False  # True only for a local Ray this gateway started
        self.owned = False
        self._restarting = threading.Event()

    @classmethod
    def fixed(cls, address: str, auth_token: str = "") -> ClusterAccess:
        """A cluster someone else runs, as seen by a gateway that only hands out its
        address (tests of the join endpoint)."""
        access = cls()
        access.address, access.auth_token = address, auth_token
        return access

    @property
    def fingerprint(self) -> str:
        """Names the current credential without revealing it: agents compare it with the
        one they joined with and rejoin when it changed."""
        if not self.auth_token:
            return ""
        return hashlib.sha256(self.auth_token.encode()).hexdigest()[:16]

    @property
    def restarting(self) -> bool:
        return self._restarting.is_set()

    def start(self) -> ClusterInfo:
        assert self.config is not None, "no cluster to start"
        # Before the token is made: a ban from now on is certainly shut out by a later start.
        started_at = utcnow()
        config = self.config
        if not config.address:
            config = dataclasses.replace(config, auth_token=new_auth_token())
        info = connect(config)
        local = info.started_locally and info.owned
        self.address = info.address
        self.auth_token = config.auth_token if local else cluster_auth_token()
        self.rotatable = local
        self.owned = info.owned
        self.started_at = started_at
        return info

    def rotate(self) -> None:
        """Restart the local Ray with a new token. Every actor on it is lost (the dispatcher
        re-queues their jobs); nodes holding only the old token can no longer join."""
        if not self.rotatable:
            raise ConflictError("this gateway does not own its Ray cluster", code="no_rotation")
        self._restarting.set()
        try:
            disconnect()
            self.start()
        finally:
            self._restarting.clear()

    def stop(self) -> None:
        if self.owned:
            disconnect()
