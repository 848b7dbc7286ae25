"""TCP_NODELAY on every connection, however uvicorn was started.

With ``--workers N`` (and ``DISTLM_WORKERS``) uvicorn's supervisor binds the listening
socket itself with ``proto`` 0; accepted sockets inherit it, and asyncio turns Nagle's
algorithm off only for sockets that report IPPROTO_TCP (uvicorn issue 3149). Every
keep-alive request after the first then waits ~40 ms for the client's delayed ACK. The
protocol classes are wrapped once, when the app module is imported in each worker.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def _with_nodelay(protocol_class: type) -> None:
    original = protocol_class.connection_made
    if getattr(original, "_distlm_nodelay", False):
        return

    def connection_made(self: Any, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # a closed or odd socket: serve it as it is
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        original(self, transport)

    connection_made._distlm_nodelay = True  # type: ignore[attr-defined]
    protocol_class.connection_made = connection_made


def enable_tcp_nodelay() -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    _with_nodelay(H11Protocol)
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed: uvicorn uses h11
        return
    _with_nodelay(HttpToolsProtocol)
