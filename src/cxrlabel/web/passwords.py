"""argon2 off the request threads, with a concurrency cap (issue 18).

A password check costs tens of milliseconds of CPU. Run on FastAPI's request thread pool (40
threads), 120 concurrent failed sign-ins held every thread and stalled every other request for
26 s. Here at most ``workers`` hashes run at once, on threads counted against their own
``CapacityLimiter`` (not the request pool's), and at most ``max_waiting`` more may queue: beyond
that a sign-in is refused at once with 503 instead of piling up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class PasswordPoolBusy(Exception):
    """Too many password checks already queued: try again shortly."""


class PasswordPool:
    def __init__(self, workers: int = 2, max_waiting: int = 64) -> None:
        self.workers, self.max_waiting = workers, max_waiting
        self._limiter: anyio.CapacityLimiter | None = None
        self._pending = 0  # changed only on the event loop thread

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pending >= self.workers + self.max_waiting:
            raise PasswordPoolBusy()
        if self._limiter is None:  # created on the event loop that uses it
            self._limiter = anyio.CapacityLimiter(self.workers)
        self._pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        finally:
            self._pending -= 1


class InlinePasswordPool(PasswordPool):
    """The behaviour before issue 18, kept as the benchmark's named baseline: hashing on the
    shared request thread pool with no cap of its own."""

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args)
