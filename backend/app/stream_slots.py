"""What open event streams may take of a gateway process: a slot each, a few per user and a
bounded number in all (429 beyond), and their database reads on a few threads of their own,
so that however many streams are open, other requests keep the server's worker threads and
the connection pool.

Slots are per process: with several gateway workers each holds its own count.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import anyio

from core.errors import RateLimitedError

# Stream reads (one per open stream every poll) run here, never on the threads that serve
# requests: at most this many hold a database connection at once.
STREAM_READ_THREADS = 4
RETRY_AFTER_S = 5


class StreamSlots:
    def __init__(self, *, per_user: int, total: int) -> None:
        self.per_user, self.total = per_user, total
        self.open: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.reads = anyio.CapacityLimiter(STREAM_READ_THREADS)

    def take(self, user_id: int) -> Callable[[], None]:
        """A slot for one of the user's streams (429 when none is free); call what it
        returns, once, when the stream ends."""
        with self.lock:
            if self.open[user_id] >= self.per_user:
                raise RateLimitedError(
                    f"you have {self.per_user} streams open, the most allowed: close one",
                    retry_after_s=RETRY_AFTER_S,
                )
            if sum(self.open.values()) >= self.total:
                raise RateLimitedError(
                    "the gateway has as many streams open as it serves; try again shortly",
                    retry_after_s=RETRY_AFTER_S,
                )
            self.open[user_id] += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self.lock:
                self.open[user_id] -= 1
                if self.open[user_id] <= 0:
                    del self.open[user_id]

        return release
