"""Retention: events received longer ago than the configured window are deleted.

Without it the event log grows for ever: at Segment's volumes a database reaches
hundreds of gigabytes, and every insert pays for a larger messageId index. With
`INLET_RETENTION` (`--retention 30d`) each core deletes, every `interval_s`, the
events received before now − retention, oldest first (by sequence), in chunks of
`chunk` events, each its own short transaction: ingest groups commit in between, so
a backlog of millions (turning retention on for an old database) never stalls
ingestion for more than one chunk.

What stays: profiles (traits, identity links, group memberships: state, not history)
and the record of deletions. What it means for deduplication: a redelivery of a
pruned event would be stored again, so the window is at least a day, far past
Segment's retries (up to four hours).

SQLite reuses the freed pages for new events: the file stops growing rather than
shrinking (`VACUUM` with the service stopped gives the space back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Counter

from service.errors import StoreUnavailable
from service.store import EventStore

log = logging.getLogger(__name__)

#: The shortest window: well past Segment's retries, so redeliveries still deduplicate.
MIN_RETENTION_S: Final = 86_400
#: Events deleted per transaction: about an ingest group's worth of work.
CHUNK: Final = 500


class Retention:
    """Deletes events received more than `keep_s` seconds ago from `store`."""

    def __init__(
        self,
        store: EventStore,
        keep_s: float,
        *,
        interval_s: float = 60.0,
        chunk: int = CHUNK,
        pruned: Counter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_s < MIN_RETENTION_S:
            raise ValueError("retention must be at least 1 day (Segment retries for 4 hours)")
        self._store = store
        self._keep_us = int(keep_s * 1_000_000)
        self._interval_s = interval_s
        self._chunk = chunk
        self._pruned = pruned
        self._clock = clock

    async def prune(self) -> int:
        """Delete every event received before now − retention, chunk by chunk, and
        return how many. A chunk that deletes fewer than `chunk` events ends the run:
        what it stopped at was received inside the window (or is a later-stored event
        backfilled with an old receive time, pruned once the events before it are)."""
        cutoff_us = int(self._clock() * 1_000_000) - self._keep_us
        total = 0
        while True:
            deleted = await self._store.prune_events(cutoff_us, self._chunk)
            total += deleted
            if self._pruned is not None and deleted:
                self._pruned.inc(deleted)
            if deleted < self._chunk:
                break
            await asyncio.sleep(0)  # let waiting ingest groups take the write lock first
        if total:
            log.info("retention: deleted %d events received before the window", total)
        return total

    async def follow(self) -> None:
        """Prune now and every `interval_s`, for ever (run as a task; cancel to stop).
        A store that is unavailable is tried again at the next interval."""
        while True:
            try:
                await self.prune()
            except StoreUnavailable:
                log.warning("retention: the store is unavailable; trying again later")
            await asyncio.sleep(self._interval_s)
