"""The agent's failures. Those that reach `distlm-node` end it with a message and the exit
status its help documents (so a supervisor such as systemd can tell a ban from a crash)."""

from __future__ import annotations


class AgentError(Exception):
    """A failure the agent explains to its user and exits on."""

    exit_code = 1


class GatewayError(AgentError):
    """The gateway refused a request; carries its `{"error", "detail"}` body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.detail = detail


class NodeBannedError(GatewayError):
    exit_code = 3  # distinct, so a supervisor (systemd) can be told not to restart


class ApprovalTimeoutError(AgentError):
    exit_code = 4


class GatewayUnreachableError(AgentError):
    pass


class RayWorkerError(AgentError):
    pass
