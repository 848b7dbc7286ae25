"""Processes that must not outlive the one that started them (a node's Rays and drivers)."""

from __future__ import annotations

import signal
import sys
from typing import Any


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


# Loaded here, not in the forked child, where importing could deadlock.
_LIBC = _load_libc()
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A ``preexec_fn``: should the starting process die without stopping the child
    (SIGKILL, a crash), the kernel sends the child SIGTERM, so no orphan keeps running the
    node's work. Linux only; elsewhere an explicit stop is the only way."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
