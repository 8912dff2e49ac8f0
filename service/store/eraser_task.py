"""What both stores' background erasers share: a task that a committed delete wakes
(`kick`), and a last pass at `stop` for the deletes still gathering, so that a process
that stops does not leave a deleted user's data on disk until something starts again.
How each erases is its store's (postgres/eraser.py, sqlite/eraser.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from service.logs import RateLimitedLog


class EraserTask(ABC):
    def __init__(self, log: logging.Logger, *, name: str, stop_timeout_s: float) -> None:
        self._name = name
        self._stop_timeout_s = stop_timeout_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warnings = RateLimitedLog(log)
        #: Deletions this process erased; erasure passes that failed (each is tried
        #: again later).
        self.erased = 0
        self.failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    def kick(self) -> None:
        """A deletion committed: erase it as soon as it may be."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop erasing; first erase what this process's deletes left gathering, for at
        most `stop_timeout_s` (what is left: another process, or the next start)."""
        if self._task is None:
            return
        gathering = self._wake.is_set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if gathering:
            try:
                async with asyncio.timeout(self._stop_timeout_s):
                    await self._last_pass()
            except Exception as exc:  # noqa: BLE001 - the next start erases it
                self.failed("erasing deletions at shutdown failed", exc)

    def failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        self._warnings.warning("erase", f"{what}: {exc}")

    @abstractmethod
    async def _run(self) -> None:
        """Until cancelled: wait for a kick or a poll's time, and erase."""

    @abstractmethod
    async def _last_pass(self) -> None:
        """Erase what is gathering, at shutdown."""
