"""argon2 off the request threads, with a concurrency cap (issue 18).

A password check costs tens of milliseconds of CPU (argon2id, 64 MiB, 4 lanes). Run on
FastAPI's request thread pool (40 threads), 120 concurrent failed sign-ins held every thread and
stalled every other request for 26 s. Here hashes run on a small dedicated thread pool
(``workers``, default half the CPUs, at least 1) whose threads run at a lower CPU priority
(``nice`` +10; argon2's lane threads inherit it), so a storm of sign-ins takes the CPU the
other requests leave over instead of the other way round. At most ``max_waiting`` more checks
may queue; beyond that a sign-in is refused at once (503, ``PasswordPoolBusy``) instead of
piling up. ``benchmarks/login_storm.py`` measures the effect.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")
LOWER_PRIORITY = 10


class PasswordPoolBusy(Exception):
    """Too many password checks already queued: try again shortly."""


def _lower_priority(nice: int) -> None:
    """Runs once in each hashing thread: a higher nice value for this thread only (Linux
    keeps it per thread; threads it starts inherit it)."""
    with suppress(AttributeError, OSError):  # not Linux, or not allowed: normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class PasswordPool:
    def __init__(
        self, workers: int | None = None, max_waiting: int = 64, nice: int = LOWER_PRIORITY
    ) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 2) // 2)
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers,
            thread_name_prefix="cxrlabel-argon2",
            initializer=_lower_priority,
            initargs=(nice,),
        )
        self._pending = 0  # changed only on the event loop thread

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pending >= self.workers + self.max_waiting:
            raise PasswordPoolBusy()
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        finally:
            self._pending -= 1


class InlinePasswordPool(PasswordPool):
    """The behaviour before issue 18, kept as the benchmark's named baseline: hashing on the
    shared request thread pool, at normal priority, with no cap of its own."""

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args)
