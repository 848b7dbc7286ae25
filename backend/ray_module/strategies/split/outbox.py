"""The trainer's outbox: its events to the runner and its uploads to the gateway, sent in
the order they were put, on a thread of its own, so the training loop never waits on a
round trip to the runner or on the gateway receiving a checkpoint.

The order is the one the trainer had when it sent them itself: an event is sent once the
one before it has been buffered by the runner (the runner serves calls on several threads),
and an upload (``call``) runs after the events put before it and before those put after it,
so the event that names a checkpoint still goes out only once the gateway has it. A failure
(the runner gone, an upload that kept failing) is raised to the trainer at its next ``emit``,
``call`` or ``flush``; nothing after it is sent."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_STOP = object()


GATHER_S = 0.1  # events put within this of the last call go out together in the next


class Outbox:
    """``send(events)`` sends a list of events in one call and returns a reference that
    ``wait(reference)`` blocks on until the runner has buffered them (the runner's
    ``emit_all.remote`` and ``ray.get``). Events go out at most every ``GATHER_S``, those
    put meanwhile together: each call costs the trainer and the runner about a millisecond
    of CPU on a small machine, and a step's event per call was a tenth of a 2-core
    machine's time in a data-bound job. The driver relays the runner's events every half
    second, so nobody sees the difference; ``flush`` sends at once."""

    def __init__(self, send: Callable[[list[Any]], Any], wait: Callable[[Any], Any]) -> None:
        self._send, self._wait = send, wait
        self._items: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._calls = 0  # put and not yet run (or skipped)
        self._sent_at = 0.0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="trainer-outbox", daemon=True)
        self._thread.start()

    def emit(self, event: Any) -> None:
        self._put(("event", event))

    def call(self, work: Callable[[], None]) -> None:
        """Run ``work`` (an upload) after what was put before it, before what comes after."""
        self._raise()
        with self._changed:
            self._calls += 1
        self._items.put(("call", work))

    def wait_calls(self, at_most: int) -> None:
        """Wait until no more than ``at_most`` calls are waiting or running (a bound on
        uploads queued behind a slow gateway)."""
        with self._changed:
            self._changed.wait_for(lambda: self._calls <= at_most or self._error is not None)
        self._raise()

    def flush(self) -> None:
        """Wait until everything put so far is sent (and the last event buffered)."""
        done = threading.Event()
        self._put(("flush", done))
        done.wait()
        self._raise()

    def close(self, timeout_s: float = 60.0) -> None:
        """Send what is left (best effort: an error is not raised), then end the thread."""
        self._items.put(_STOP)
        self._thread.join(timeout_s)

    def _put(self, item: tuple[str, Any]) -> None:
        self._raise()
        self._items.put(item)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        last: Any = None
        held: Any = None  # an item taken while gathering events, handled next
        while (item := held if held is not None else self._items.get()) is not _STOP:
            held = None
            kind, value = item
            try:
                if self._error is not None:
                    continue  # nothing after a failure is sent
                if kind == "event":
                    if last is not None:
                        self._wait(last)
                    events = [value]
                    gathered_until = self._sent_at + GATHER_S
                    while held is None:  # and the events put until then (up to a call)
                        try:
                            following = self._items.get(
                                timeout=max(0.0, gathered_until - time.monotonic())
                            )
                        except queue.Empty:
                            break
                        if following is not _STOP and following[0] == "event":
                            events.append(following[1])
                        else:
                            held = following
                    last = self._send(events)
                    self._sent_at = time.monotonic()
                elif kind == "call":
                    value()
                elif last is not None:  # flush: the last event buffered too
                    self._wait(last)
                    last = None
            except BaseException as error:  # raised in the trainer's thread
                self._error = error
            finally:
                if kind == "flush":
                    value.set()
                elif kind == "call":
                    with self._changed:
                        self._calls -= 1
                        self._changed.notify_all()
        if last is not None and self._error is None:
            try:
                self._wait(last)
            except BaseException as error:
                self._error = error
