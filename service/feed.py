"""The live feed behind Subscribe: an account's committed events, in commit order.

Each stream reads the store a page at a time after its cursor and, once caught
up, sleeps until the store signals a commit. Nothing is pushed to streams: the
writer only flips a flag, so a stalled reader costs ingestion nothing, and a
stream holds at most one page in memory (gRPC flow control stops `write` when
the client does not read). A slow poll covers commits the signal cannot see
(another process writing to the same database; sibling workers of `inlet serve
--workers` signal theirs, service/worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from service.errors import Unavailable
from service.metrics import CoreMetrics
from service.store import EventStore
from service.store.base import EventQuery, StoredRecord


class Feed:
    def __init__(
        self,
        store: EventStore,
        poll_s: float = 1.0,
        page_size: int = 256,
        metrics: CoreMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._poll_s = poll_s
        self._page_size = page_size
        self._closing = False

    async def follow(
        self, account_id: int, after: int, types: tuple[str, ...] = ()
    ) -> AsyncIterator[StoredRecord]:
        """Yield the account's events with sequence > `after`, forever.

        Raises:
            Unavailable: the core is shutting down (the caller reconnects and resumes).
        """
        while not self._closing:
            # Taken before reading: a commit between the read and the wait sets it.
            committed = self._store.commits.current()
            page = await self._store.list_events(
                EventQuery(account_id, types=types, after=after, limit=self._page_size)
            )
            for record in page:
                if self._metrics is not None:
                    delay = time.time() - record.received_at_us / 1e6
                    self._metrics.subscribe_delay.observe(max(delay, 0.0))
                yield record
                after = record.seq
            if len(page) < self._page_size and not self._closing:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that lands as the wait completes (a client leaving just
                # as a commit wakes its stream), and the stream would linger a poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await committed.wait()
        raise Unavailable(
            "the core is shutting down; resume from the last sequence", "shutting_down"
        )

    def stream_opened(self) -> None:
        if self._metrics is not None:
            self._metrics.subscribe_streams.inc()

    def stream_closed(self) -> None:
        if self._metrics is not None:
            self._metrics.subscribe_streams.dec()

    def close(self) -> None:
        """End every stream (at shutdown): each gets UNAVAILABLE and may resume elsewhere."""
        self._closing = True
        self._store.commits.wake()
