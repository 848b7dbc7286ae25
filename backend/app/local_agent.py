"""`make run`'s own node, where jobs run on the nodes' own Ray: the gateway's machine lent by
the bootstrap admin through a `distlm-node` agent, the same path as any remote node.

Before the gateway serves, its node is registered (approved) with a fresh credential, kept
in a private file for the agent; once the gateway answers, the agent starts beside it and
is stopped with it. ``DISTLM_LOCAL_NODE=false`` lends nothing."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from agent.credentials import CredentialStore
from agent.gateway_client import NodeIdentity
from auth.passwords import password_context
from compute.accounts.service import ensure_bootstrap_admin, signup_grant_micro
from compute.nodes.local_node import detect_local_resources, register_local_node
from compute.nodes.service import CREDENTIAL_PREFIX
from core.db import get_engine, make_session_factory, session_scope
from core.migrations import migration_lock, upgrade_to_head
from core.settings import Settings

log = logging.getLogger("distlm.launcher")

READY_TIMEOUT_S = 120.0


class LocalAgent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = f"http://{_reachable(settings.host)}:{settings.port}"
        self.directory = settings.storage_path.parent / "local-node"
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()

    def prepare(self) -> bool:
        """Register the machine's node with a new credential for its agent; False when
        there is no bootstrap admin to own it."""
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        resources = detect_local_resources(self.settings.ray_num_cpus)
        engine = get_engine(self.settings.database_url)
        with migration_lock(self.settings.database_url):
            upgrade_to_head(self.settings.database_url, locked=True)
            with session_scope(make_session_factory(engine)) as session:
                ensure_bootstrap_admin(  # its owner (the gateway finds it done)
                    session,
                    password_context(
                        self.settings.argon2_time_cost, self.settings.argon2_memory_kib
                    ),
                    username=self.settings.admin_username,
                    password=self.settings.admin_password,
                    signup_grant=signup_grant_micro(self.settings.signup_grant),
                )
                node = register_local_node(
                    session, self.settings.admin_username, resources, credential=credential
                )
                if node is None:
                    return False
                identity = NodeIdentity(node.id, node.hostname, credential)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        CredentialStore(self.credential_file).save(identity, gateway=self.base)
        self.hostname, self.resources = identity.hostname, resources
        return True

    @property
    def credential_file(self) -> Path:
        return self.directory / "node.json"

    def start_when_ready(self) -> None:
        threading.Thread(target=self._start_when_ready, name="local-agent", daemon=True).start()

    def _start_when_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.stopping.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            return
        # The agent's environment holds none of the gateway's secrets, nor its Ray settings
        # but where Ray keeps its files (RAY_TMPDIR: an operator's choice for the machine).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DISTLM_", "RAY_")) or k == "RAY_TMPDIR"
        }
        command = [
            sys.executable, "-m", "agent", "--coordinator-address", self.base,
            "--hostname", self.hostname, "--credential-file", str(self.credential_file),
            "--cpus", str(self.resources.cpus), "--memory-gb", str(self.resources.memory_gb),
            "--object-store-mb", str(self.settings.ray_object_store_mb),
            "--heartbeat-interval", str(self.settings.node_heartbeat_interval),
            # This machine's datasets are the gateway's: jobs naming a local path read them.
            "--data-root", str(self.settings.data_root),
        ]  # fmt: skip
        command += ["--gpus", str(self.resources.gpus)] if self.resources.gpus else ["--cpu"]
        log_path = self.directory / "agent.log"
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        log.info("the local node's agent started (its log: %s)", log_path)

    def stop(self) -> None:
        """Ctrl-C for the agent: it says goodbye and stops its Ray and jobs."""
        self.stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _reachable(host: str) -> str:
    """Where this machine reaches the gateway it serves."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
