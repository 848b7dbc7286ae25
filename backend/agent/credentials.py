"""The node's identity kept on disk, so that a restarted agent reuses its node."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.errors import AgentError
from agent.gateway_client import NodeIdentity


def default_credential_file(hostname: str) -> Path:
    return Path.home() / ".distlm" / f"node-{hostname}.json"


class CredentialStore:
    """The node id and its one-time credential, kept so a restart reuses the node."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> NodeIdentity | None:
        try:
            body = json.loads(self.path.read_text())
            return NodeIdentity(
                node_id=int(body["node_id"]),
                hostname=str(body["hostname"]),
                credential=body.get("credential") or None,
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise AgentError(
                f"cannot read the credential file {self.path} ({type(exc).__name__}); "
                "move it away to register the node again"
            ) from exc

    def save(self, identity: NodeIdentity, *, gateway: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {
            "gateway": gateway,
            "node_id": identity.node_id,
            "hostname": identity.hostname,
            "credential": identity.credential,
        }
        # Created 0600 from the start (never readable by others, even briefly), then
        # renamed over the old file so a crash cannot leave half a secret behind.
        partial = self.path.with_name(self.path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.chmod(partial, 0o600)
            json.dump(body, out, indent=2)
            out.write("\n")
        os.replace(partial, self.path)
