"""HTTP calls to the gateway, and what they tell the agent: where the gateway is, which node
the agent speaks for, and what its Ray offers. The contract relied on is the
gateway's HTTP API (see README, "API"), not its packages."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.errors import AgentError, GatewayError, GatewayUnreachableError, NodeBannedError
from agent.machine import NodeResources
from protocol.assignment import RunAssignment, assignment_from_wire
from protocol.nodes import JoinInfo

DEFAULT_GATEWAY_PORT = 8000


def gateway_url(address: str) -> str:
    """`HOST:PORT` as in the seeds' `--coordinator-address`, `HOST` (port 8000), or a URL."""
    address = address.strip().rstrip("/")
    if not address:
        raise ValueError("the gateway address is empty")
    if "://" in address:
        scheme = address.split("://", 1)[0].lower()
        if scheme not in {"http", "https"}:
            raise ValueError(f"the gateway address must be http(s), not {scheme}://")
        return address
    has_port = "]:" in address if address.startswith("[") else ":" in address
    return f"http://{address}" if has_port else f"http://{address}:{DEFAULT_GATEWAY_PORT}"


@dataclass(frozen=True)
class NodeIdentity:
    """Which node this agent speaks for. Without a credential (it is shown only once, at
    registration) the agent authenticates with its owner's login instead."""

    node_id: int
    hostname: str
    credential: str | None = field(default=None, repr=False)


def error_from_response(response: httpx.Response) -> GatewayError:
    code, detail = f"http_{response.status_code}", response.reason_phrase or "request failed"
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get("error") or code)
            detail = str(body.get("detail") or detail)
    kind = NodeBannedError if code == "node_banned" else GatewayError
    return kind(response.status_code, code, detail)


class GatewayClient:
    """The gateway's HTTP API as the agent uses it. Owner calls log in lazily (a restart
    with a stored node credential needs no password) and once more when the access token
    has expired."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._username = username
        self._password = password
        self._owner_token = token
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    @property
    def can_log_in(self) -> bool:
        return bool(self._username and self._password)

    def _send(self, method: str, path: str, *, bearer: str | None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnreachableError(
                f"cannot reach the gateway at {self.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if not response.is_success:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise GatewayError(
                response.status_code, "bad_response", f"{method} {path} did not answer JSON"
            ) from exc

    def login(self) -> str:
        if not self.can_log_in:
            raise AgentError(
                "this step needs the node owner's login: pass --username and --password "
                "(or DISTLM_NODE_USERNAME / DISTLM_NODE_PASSWORD), or --token"
            )
        body = self._send(
            "POST",
            "/auth/token",
            bearer=None,
            data={"username": self._username, "password": self._password},
        )
        self._owner_token = str(body["access_token"])
        return self._owner_token

    def _as_owner(self, method: str, path: str, **kwargs: Any) -> Any:
        token = self._owner_token or self.login()
        try:
            return self._send(method, path, bearer=token, **kwargs)
        except GatewayError as exc:
            # Access tokens expire (15 minutes by default); a long-running agent logs in again.
            if exc.status != 401 or not self.can_log_in:
                raise
        return self._send(method, path, bearer=self.login(), **kwargs)

    def _as_node(self, identity: NodeIdentity, method: str, path: str, **kwargs: Any) -> Any:
        if identity.credential:
            return self._send(method, path, bearer=identity.credential, **kwargs)
        return self._as_owner(method, path, **kwargs)

    def me(self) -> dict[str, Any]:
        return self._as_owner("GET", "/auth/me")

    def list_nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        while True:
            page = self._as_owner("GET", "/nodes", params={"limit": 500, "offset": len(nodes)})
            nodes.extend(page["items"])
            if not page["items"] or len(nodes) >= int(page["total"]):
                return nodes

    def register_node(self, hostname: str, resources: NodeResources) -> dict[str, Any]:
        return self._as_owner(
            "POST", "/nodes/register", json={"hostname": hostname, "resources": resources.as_json()}
        )

    def join_info(self, identity: NodeIdentity) -> JoinInfo:
        return JoinInfo.from_json(self._as_node(identity, "GET", f"/nodes/{identity.node_id}/join"))

    def heartbeat(self, identity: NodeIdentity, sample: dict[str, float]) -> dict[str, Any]:
        path = f"/nodes/{identity.node_id}/heartbeat"
        return self._as_node(identity, "POST", path, json=sample)

    def runs(
        self,
        identity: NodeIdentity,
        clusters: list[dict[str, Any]] | None = None,
        *,
        single_node_only: bool = False,
        lost: list[dict[str, Any]] | None = None,
        pool: str | None = None,
        offers: dict[str, float] | None = None,
    ) -> tuple[list[RunAssignment], float]:
        """Every attempt this node takes part in now, and when to ask again; ``clusters``
        reports the heads this node started for the multi-node attempts it drives; ``pool``
        the trusted Ray pool it is a member of, if any."""
        path = f"/nodes/{identity.node_id}/runs"
        ask = {
            "clusters": clusters or [],
            "single_node_only": single_node_only,
            "lost": lost or [],
            "ray_pool": pool,
            "offers": offers,
        }
        body = self._as_node(identity, "POST", path, json=ask)
        runs = [assignment_from_wire(item) for item in body.get("runs") or []]
        return runs, float(body.get("poll_in_s") or 1.0)

    def leave(self, identity: NodeIdentity) -> None:
        """Tell the gateway this node is going away (it shows offline at once)."""
        self._as_node(identity, "POST", f"/nodes/{identity.node_id}/leave")

    def new_credential(self, node_id: int) -> str:
        """A new credential for the owner's node (the old one stops working)."""
        return str(self._as_owner("POST", f"/nodes/{node_id}/credential")["credential"])
