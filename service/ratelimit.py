"""Per-key rate limiting: one token bucket per API key, in memory, per core process.

So that one noisy account cannot starve the others: past its rate, a key's events
are refused with RESOURCE_EXHAUSTED (HTTP 429 + Retry-After), which Segment retries.
With several cores each enforces the limit on its own share of the traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

_MAX_BUCKETS: Final = 100_000


class RateLimiter:
    """Token buckets: `rate` events per second per key, bursts of up to `burst`."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated at)

    def admit(self, key: str, count: int) -> float | None:
        """Admit `count` events of `key` at once if it has a token left, going into debt
        for the rest; None if admitted, else seconds until a token is back.

        For batches: an SDK batch larger than the burst would otherwise be refused in
        part on every retry (its first events, now duplicates, spend the tokens again)
        and never get through. The debt keeps the long-run rate: the key waits longer.
        """
        now = self._clock()
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if tokens + 1e-9 >= 1:
            if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
                self._buckets.clear()
            self._buckets[key] = (tokens - count, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate
