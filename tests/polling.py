"""The one way tests wait: poll a condition instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout_s: float = 240,
    what: object = "the condition",
    every_s: float = 0.2,
) -> Any:
    """The condition's first truthy value; AssertionError naming ``what`` after ``timeout_s``.

    ``what`` may be a callable, evaluated only on timeout, to describe the state then.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            shown = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {shown}")
        time.sleep(every_s)
