"""A typed client of the DistLM API, as a notebook uses it:

from distlm import Client
client = Client("http://localhost:8000")
client.login("alice", "password")
job = client.submit("job.json")
job.wait(progress=True)
job.metrics()[-1]; job.download_model("model.tar.gz")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from distlm.errors import NotAuthenticatedError, error_for

TERMINAL = ("succeeded", "failed", "cancelled")
TokensChanged = Callable[[str, str | None], None]


class Client:
    def __init__(
        self,
        url: str = "http://localhost:8000",
        *,
        token: str | None = None,
        refresh_token: str | None = None,
        on_tokens: TokensChanged | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.refresh_token = refresh_token
        self.on_tokens = on_tokens  # told of renewed tokens (the CLI saves them)
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------
    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer, or the API's error as an exception (401 once renews the token)."""
        response = self._send(method, path, **kwargs)
        if response.status_code == 204:
            return None
        return response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", None)
        response = self.http.request(method, path, headers=self._headers(headers), **kwargs)
        renewable = bool(self.refresh_token) and path != "/auth/refresh"
        if response.status_code == 401 and renewable and self._renew():
            response = self.http.request(method, path, headers=self._headers(headers), **kwargs)
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        raise error_for(response.status_code, body)

    def _renew(self) -> bool:
        response = self.http.post("/auth/refresh", json={"refresh_token": self.refresh_token})
        if not response.is_success:
            return False
        self._keep(response.json())
        return True

    def _keep(self, body: dict[str, Any]) -> None:
        self.token, self.refresh_token = body["access_token"], body.get("refresh_token")
        if self.on_tokens:
            self.on_tokens(self.token, self.refresh_token)

    # -- accounts ------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        response = self.http.post("/auth/token", data={"username": username, "password": password})
        if not response.is_success:
            raise error_for(response.status_code, response.json())
        body = response.json()
        self._keep(body)
        return body

    def logout(self) -> None:
        if self.refresh_token:
            self.http.post("/auth/logout", json={"refresh_token": self.refresh_token})
        self.token = self.refresh_token = None

    def me(self) -> dict[str, Any]:
        return self.request("GET", "/auth/me")

    # -- jobs ----------------------------------------------------------------------------
    def submit(
        self, spec: dict[str, Any] | str | Path, *, idempotency_key: str | None = None
    ) -> Job:
        body = load_spec(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Job(self, self.request("POST", "/jobs/submit", json=body, headers=headers))

    def estimate(self, spec: dict[str, Any] | str | Path) -> dict[str, Any]:
        return self.request("POST", "/tokens/estimate", json=load_spec(spec))

    def jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        page = self.request("GET", "/jobs", params=params)
        return [Job(self, item) for item in page["items"]]

    def job(self, job_id: int) -> Job:
        return Job(self, self.request("GET", f"/jobs/{job_id}"))

    def events(self, job_id: int, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The job's Server-Sent Events ({"id", "event", "data"}) until its ``end``."""
        headers = self._headers({"Last-Event-ID": last_event_id} if last_event_id else None)
        with self.http.stream(
            "GET", f"/jobs/{job_id}/events", headers=headers, timeout=None
        ) as response:
            if not response.is_success:
                response.read()
                raise error_for(response.status_code, response.json())
            event: dict[str, str] = {}
            for line in response.iter_lines():
                if line.startswith(("id:", "event:", "data:")):
                    key, _, value = line.partition(":")
                    event[key] = value.strip()
                elif not line and event.get("event"):
                    yield {
                        "id": event.get("id"),
                        "event": event["event"],
                        "data": json.loads(event.get("data") or "{}"),
                    }
                    if event["event"] == "end":
                        return
                    event = {}

    def metrics(self, job_id: int) -> list[dict[str, Any]]:
        return self.request("GET", f"/metrics/training/{job_id}", params={"limit": 5000})["series"]

    def logs(self, job_id: int) -> list[dict[str, Any]]:
        return self.request("GET", f"/jobs/{job_id}/logs", params={"limit": 5000})["items"]

    def cancel(self, job_id: int) -> Job:
        return Job(self, self.request("POST", f"/jobs/{job_id}/cancel"))

    def download(self, path: str, target: str | Path) -> Path:
        target = Path(target)
        with self.http.stream("GET", path, headers=self._headers()) as response:
            if not response.is_success:
                response.read()
                raise error_for(response.status_code, response.json())
            with target.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return target

    # -- nodes, tokens, admin ----------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/nodes", params={"limit": 500})["items"]

    def balance(self) -> dict[str, Any]:
        return self.request("GET", "/tokens/balance/me")

    def history(self, limit: int = 100, account: str = "wallet") -> list[dict[str, Any]]:
        """Your wallet's movements, newest first (``account="all"``: the escrows' legs too)."""
        params = {"limit": limit, "account": account}
        return self.request("GET", "/tokens/history/me", params=params)["items"]

    def add_user(self, username: str, password: str, role: str = "user") -> dict[str, Any]:
        body = {"username": username, "password": password, "role": role}
        return self.request("POST", "/auth/register", json=body)

    def grant(self, user_id: int, amount: float, memo: str = "") -> dict[str, Any]:
        body = {"user_id": user_id, "amount": amount, "memo": memo}
        return self.request("POST", "/tokens/grant", json=body)

    def approve_node(self, node_id: int) -> dict[str, Any]:
        return self.request("POST", f"/nodes/{node_id}/approve")

    def ban_node(self, node_id: int) -> dict[str, Any]:
        return self.request("POST", f"/nodes/{node_id}/ban")


@dataclass
class Job:
    """A job as the API last described it; ``refresh``, ``wait`` and friends ask again."""

    client: Client = field(repr=False)
    data: dict[str, Any]

    @property
    def id(self) -> int:
        return int(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def reason(self) -> str:
        return str(self.data.get("status_reason", ""))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Job:
        self.data = self.client.request("GET", f"/jobs/{self.id}")
        return self

    def wait(
        self, *, progress: bool = False, timeout_s: float | None = None, poll_s: float = 1.0
    ) -> Job:
        """Until the job ends; with ``progress`` a progress bar (step of total, loss, speed,
        tokens spent of the hold) on stderr."""
        if progress:
            from distlm.progress import watch

            watch(self, timeout_s=timeout_s)
            return self.refresh()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.refresh().done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {self.status}")
            time.sleep(poll_s)
        return self

    def cancel(self) -> Job:
        self.data = self.client.cancel(self.id).data
        return self

    def metrics(self) -> list[dict[str, Any]]:
        return self.client.metrics(self.id)

    def logs(self) -> list[dict[str, Any]]:
        return self.client.logs(self.id)

    def events(self, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        return self.client.events(self.id, last_event_id)

    def download_model(self, target: str | Path) -> Path:
        return self.client.download(f"/jobs/{self.id}/artifacts", target)

    def download_results(self, target: str | Path, fmt: str = "jsonl") -> Path:
        return self.client.download(f"/jobs/{self.id}/results?format={fmt}", target)


def load_spec(spec: dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(spec, dict):
        return spec
    try:
        return json.loads(Path(spec).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no job spec file {spec}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{spec} is not JSON: {error}") from None


__all__ = ["Client", "Job", "NotAuthenticatedError"]
