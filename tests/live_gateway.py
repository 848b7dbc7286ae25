"""A gateway served on a real port in the test's process (uvicorn in a thread): for what
needs real connections (a job's driver, a process of its own; many open streams)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn

from tests.polling import wait_for


class LiveGateway(httpx.Client):
    """An httpx client of a gateway served on a real port (drivers, being processes of their
    own, reach it over HTTP); ``app`` is the served application, as on a TestClient."""

    def __init__(self, make_app: Callable[[], Any], port: int) -> None:
        super().__init__(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self.make_app, self.port = make_app, port

    def start(self) -> LiveGateway:
        self.app = self.make_app()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self.thread.start()
        wait_for(
            lambda: self.server.started or not self.thread.is_alive(),
            timeout_s=60,
            what="the gateway to serve",
        )
        assert self.server.started, "the gateway did not start"
        return self

    def shut_down(self) -> None:
        """Stop serving (and the dispatcher with it), the way a gateway process ends."""
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def restart(self) -> None:
        """Another gateway process on the same database and port takes over."""
        self.shut_down()
        self.start()

    def stop(self) -> None:
        self.close()
        self.shut_down()
