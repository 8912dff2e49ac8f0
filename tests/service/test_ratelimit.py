"""service/ratelimit.py: token buckets per key, with an injected clock."""

from __future__ import annotations

import pytest

from service.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_the_wait_until_a_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, clock=clock)
    assert [limiter.take("k") for _ in range(10)] == [None] * 10  # a one-second burst
    assert limiter.take("k") == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.take("k") is None
    assert limiter.take("k") == pytest.approx(0.1)


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1, clock=Clock())
    assert limiter.take("noisy") is None
    assert limiter.take("noisy") is not None
    assert limiter.take("quiet") is None


def test_tokens_refill_up_to_the_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    clock.now += 3600  # an hour idle does not bank an hour of events
    assert [limiter.take("k") is None for _ in range(4)] == [True, True, True, False]


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0)
