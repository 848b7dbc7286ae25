"""The node's own Ray: one head on this machine with the node's resources, kept warm so
that a single-node job starts at once, every component on a port of its own, with its warm
workers (``ray_module.warm``: processes with torch imported that a job's actors become).
Nothing of another owner's runs on it."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from protocol.nodes import JoinInfo
from ray_module.cluster import ClusterConfig
from ray_module.head import HeadDirectory, HeadRecord, head_alive, start_head, stop_head
from ray_module.warm.launch import default_size, launch_pool

log = logging.getLogger("distlm.agent")


class OwnRay:
    def __init__(
        self,
        join: JoinInfo,
        directory: Path,
        *,
        host: str,
        object_store_mb: int | None,
        warm_workers: int | None = None,
    ) -> None:
        self.node_id = join.node_id
        self.warm_workers = default_size(join.num_cpus) if warm_workers is None else warm_workers
        self.config = ClusterConfig(
            num_cpus=join.num_cpus,
            num_gpus=join.num_gpus,
            resources=dict(join.resources),
            labels=dict(join.labels),
            object_store_mb=object_store_mb or 256,
            # It listens on the node's address: only this agent's drivers hold its token, so
            # no one else who can reach the machine runs code on it.
            auth_token=secrets.token_urlsafe(32),
        )
        self.directory = HeadDirectory(directory)
        self.host = host
        self.record: HeadRecord | None = None

    @property
    def token(self) -> str:
        return self.config.auth_token

    @property
    def address(self) -> str:
        assert self.record is not None
        return self.record.address

    def start(self) -> str:
        self.record = start_head(self.config, self.directory, host=self.host, die_with_parent=True)
        log.info("this node's Ray is up at %s", self.record.address)
        launch_pool(self.record.address, self.token, self.node_id, self.warm_workers)
        return self.record.address

    def alive(self) -> bool:
        return self.record is not None and head_alive(self.record)

    def stop(self) -> None:
        if self.record is not None:
            stop_head(self.record)
            self.record = None
