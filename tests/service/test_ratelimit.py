"""service/ratelimit.py: token buckets per key, with an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.ratelimit import RateLimiter, SharedBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_the_wait_until_a_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, clock=clock)
    assert [limiter.admit("k", 1) for _ in range(10)] == [None] * 10  # a one-second burst
    assert limiter.admit("k", 1) == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.admit("k", 1) is None
    assert limiter.admit("k", 1) == pytest.approx(0.1)


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1, clock=Clock())
    assert limiter.admit("noisy", 1) is None
    assert limiter.admit("noisy", 1) is not None
    assert limiter.admit("quiet", 1) is None


def test_tokens_refill_up_to_the_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    clock.now += 3600  # an hour idle does not bank an hour of events
    assert [limiter.admit("k", 1) is None for _ in range(4)] == [True, True, True, False]


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0)


def test_a_batch_larger_than_the_burst_gets_through_and_the_key_then_waits() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, clock=clock)
    assert limiter.admit("k", 100) is None  # 100 events with 10 tokens: admitted, in debt
    assert limiter.admit("k", 1) == pytest.approx(9.1)  # back to one token after 9.1 s
    clock.now += 9.1
    assert limiter.admit("k", 1) is None
    assert limiter.admit("other", 1) is None  # other keys are not affected


def test_workers_sharing_the_table_allow_a_key_its_rate_not_twice_it(tmp_path: Path) -> None:
    # Two workers' limiters on one table (as `inlet serve --workers 2` has them): the
    # key's burst and rate are spent across both, not once in each.
    clock = Clock()
    first, second = (
        RateLimiter(rate=4, clock=clock, buckets=SharedBuckets(tmp_path / "rate-limit"))
        for _ in range(2)
    )
    admitted = [limiter.admit("k", 1) is None for _ in range(4) for limiter in (first, second)]
    assert admitted.count(True) == 4  # the one-second burst, in all
    assert second.admit("k", 1) == pytest.approx(0.25)
    clock.now += 0.25
    assert first.admit("k", 1) is None
    assert second.admit("k", 1) == pytest.approx(0.25)
    assert first.admit("other", 1) is None  # its own bucket


def test_a_full_shared_table_gives_up_the_longest_idle_key(tmp_path: Path) -> None:
    clock = Clock()
    limiter = RateLimiter(
        rate=1, clock=clock, buckets=SharedBuckets(tmp_path / "rate-limit", slots=8)
    )
    assert limiter.admit("old", 1) is None
    for n in range(20):  # more keys than slots
        clock.now += 1
        assert limiter.admit(f"k{n}", 1) is None
        assert limiter.admit(f"k{n}", 1) is not None  # each still limited while kept
