"""The gateway's own machine as a node of the bootstrap admin (the embedded default)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.service import find_user
from compute.models import Node
from compute.nodes.service import NodeApproval, hash_credential


@dataclass(frozen=True)
class LocalResources:
    cpus: int
    memory_gb: float
    gpus: int


def detect_local_resources(num_cpus: int = 0) -> LocalResources:
    import psutil

    return LocalResources(
        cpus=num_cpus or os.cpu_count() or 1,
        memory_gb=round(psutil.virtual_memory().total / 1024**3, 1),
        gpus=local_gpu_count(),
    )


def local_gpu_count() -> int:
    """NVIDIA GPUs of this machine, from nvidia-smi (the driver's own tool), within
    CUDA_VISIBLE_DEVICES. Not through torch: importing it costs every gateway process
    ~200 MB for the sake of one number."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return 0
    try:
        listed = subprocess.run(
            [executable, "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    entries = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry == "-1":
            break  # CUDA stops at the first invalid entry
        entries.append(entry)
    return min(count, len(entries))


def register_local_node(
    session: Session,
    admin_username: str,
    resources: LocalResources,
    *,
    credential: str | None = None,
) -> Node | None:
    """Create or refresh the local machine's node: approved, owned by the bootstrap admin
    (None when there is no such admin, e.g. DISTLM_ADMIN_PASSWORD is empty). ``credential``:
    the one its local agent will use (a fresh one each start)."""
    owner = find_user(session, admin_username)
    if owner is None:
        return None
    hostname = f"{socket.gethostname()}-gateway"
    node = session.scalar(select(Node).where(Node.owner_id == owner.id, Node.hostname == hostname))
    if node is None:
        node = Node(
            owner_id=owner.id,
            hostname=hostname,
            # Never used: the local node proves itself through Ray, not heartbeats.
            credential_hash=hash_credential(secrets.token_urlsafe(32)),
            gpu=resources.gpus,
            cpu_cores=resources.cpus,
            memory_gb=resources.memory_gb,
        )
        session.add(node)
    node.gpu, node.cpu_cores, node.memory_gb = resources.gpus, resources.cpus, resources.memory_gb
    node.approval = NodeApproval.APPROVED.value
    if credential is not None:
        node.credential_hash = hash_credential(credential)
    session.flush()
    return node
