"""Per-key rate limiting: one token bucket per API key, in memory.

So that one noisy account cannot starve the others: past its rate, a key's events
are refused with RESOURCE_EXHAUSTED (HTTP 429 + Retry-After), which Segment retries.
The workers of `inlet serve --workers` share their buckets (`SharedBuckets`, a table
in shared memory), so N workers allow a key its rate, not N times it. Separate cores
(`serve core` on PostgreSQL) each enforce the limit on their own share of the traffic.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

_MAX_BUCKETS: Final = 100_000


class Buckets(Protocol):
    """Where the buckets live: (tokens, updated at) per key."""

    def get(self, key: str) -> tuple[float, float] | None: ...

    def put(self, key: str, tokens: float, updated: float) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


class LocalBuckets:
    """A dict, for one process."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def get(self, key: str) -> tuple[float, float] | None:
        return self._buckets.get(key)

    def put(self, key: str, tokens: float, updated: float) -> None:
        if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens, updated)

    def __enter__(self) -> object:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_SLOT: Final = struct.Struct("<Qdd")  # key digest (0: empty), tokens, updated at
_PROBES: Final = 8


def _digest(key: str) -> int:
    """A stable 64-bit digest of `key`, never 0 (Python's hash() differs per process)."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return value or 1


class SharedBuckets:
    """Buckets in a file mapped by every worker (the supervisor's private folder), each
    read-modify-write under an exclusive `flock` of the file.

    A fixed table of `slots`: a key lives in one of `_PROBES` slots after its digest's;
    when all are taken by other keys, the one updated longest ago is given up (that key
    starts again with a full bucket, as LocalBuckets' clearing does). `time.monotonic`
    is the machine's CLOCK_MONOTONIC, the same in every process."""

    def __init__(self, path: Path, slots: int = 65_536) -> None:
        self._slots = slots
        size = slots * _SLOT.size
        # Each worker opens the file itself: flock excludes open files, not processes.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)  # zero-filled: every slot empty
        self._map = mmap.mmap(self._fd, size)
        # The slot read by `get` in this critical section, for `put`.
        self._found: tuple[int, int] | None = None

    def __enter__(self) -> object:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        self._found = None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def get(self, key: str) -> tuple[float, float] | None:
        digest = _digest(key)
        start = digest % self._slots
        oldest, oldest_at = start, float("inf")
        for probe in range(_PROBES):
            slot = (start + probe) % self._slots
            owner, tokens, updated = _SLOT.unpack_from(self._map, slot * _SLOT.size)
            if owner == digest:
                self._found = (slot, digest)
                return tokens, updated
            if owner == 0:
                self._found = (slot, digest)
                return None
            if updated < oldest_at:
                oldest, oldest_at = slot, updated
        self._found = (oldest, digest)
        return None

    def put(self, key: str, tokens: float, updated: float) -> None:
        if self._found is None:  # put without get: find the key's slot first
            self.get(key)
        assert self._found is not None
        slot, digest = self._found
        _SLOT.pack_into(self._map, slot * _SLOT.size, digest, tokens, updated)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class RateLimiter:
    """Token buckets: `rate` events per second per key, bursts of up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        buckets: Buckets | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._clock = clock
        self._buckets: Buckets = buckets if buckets is not None else LocalBuckets()

    def admit(self, key: str, count: int) -> float | None:
        """Admit `count` events of `key` at once if it has a token left, going into debt
        for the rest; None if admitted, else seconds until a token is back.

        For batches: an SDK batch larger than the burst would otherwise be refused in
        part on every retry (its first events, now duplicates, spend the tokens again)
        and never get through. The debt keeps the long-run rate: the key waits longer.
        """
        with self._buckets:
            now = self._clock()
            tokens, updated = self._buckets.get(key) or (self.burst, now)
            tokens = min(self.burst, tokens + max(now - updated, 0.0) * self.rate)
            if tokens + 1e-9 >= 1:
                self._buckets.put(key, tokens - count, now)
                return None
            self._buckets.put(key, tokens, now)
            return (1 - tokens) / self.rate
