"""http_bridge/batcher.py: concurrent submissions coalesced into batch calls.

The fake `send` holds each call open until the test releases it, so every ordering
below is forced by the test, never by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from http_bridge.batcher import Batcher, QueueFull
from tests.waiting import settle

LONG = 5.0  # a submit timeout no test should reach


class GatedSend:
    """A `send` whose calls each wait for `release()`; records every batch it gets."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._gates: list[asyncio.Event] = []
        self._started: asyncio.Queue[int] = asyncio.Queue()
        self.failures: dict[int, BaseException] = {}
        self.wrong_count: set[int] = set()

    async def __call__(self, items: list[str]) -> Sequence[str]:
        index = len(self.calls)
        self.calls.append(list(items))
        gate = asyncio.Event()
        self._gates.append(gate)
        self._started.put_nowait(index)
        await gate.wait()
        if index in self.failures:
            raise self.failures[index]
        if index in self.wrong_count:
            return [f"done:{item}" for item in items][:-1]
        return [f"done:{item}" for item in items]

    async def next_call(self) -> list[str]:
        """Wait for the next call to start; return its batch."""
        index = await asyncio.wait_for(self._started.get(), LONG)
        return self.calls[index]

    def release(self, index: int) -> None:
        self._gates[index].set()

    def release_all(self) -> None:
        for gate in self._gates:
            gate.set()

    def no_new_call(self) -> bool:
        return self._started.empty()


@pytest.fixture
async def send() -> AsyncIterator[GatedSend]:
    fake = GatedSend()
    yield fake
    fake.release_all()


def submit(
    batcher: Batcher[str, str], item: str, size: int = 1, timeout: float = LONG
) -> asyncio.Task[str]:
    return asyncio.create_task(batcher.submit(item, size, timeout))


async def test_lone_submission_is_sent_at_once_and_gets_its_result(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    task = submit(batcher, "a")
    assert await send.next_call() == ["a"]
    send.release(0)
    assert await task == "done:a"


async def test_submissions_during_a_call_are_coalesced_into_the_next_single_call(
    send: GatedSend,
) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    assert await send.next_call() == ["a"]

    queued = [submit(batcher, item) for item in ("b", "c", "d")]
    await settle()
    assert batcher.pending == 3
    assert send.no_new_call()  # one call in flight at a time

    send.release(0)
    assert await send.next_call() == ["b", "c", "d"]
    send.release(1)
    assert await first == "done:a"
    assert [await task for task in queued] == ["done:b", "done:c", "done:d"]
    assert send.calls == [["a"], ["b", "c", "d"]]
    assert batcher.pending == 0


async def test_each_submitter_gets_the_result_for_its_own_item(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    blocker = submit(batcher, "first")
    await send.next_call()
    items = [f"item-{n}" for n in range(50)]
    tasks = {item: submit(batcher, item) for item in reversed(items)}
    await settle()
    send.release(0)
    assert len(await send.next_call()) == 50
    send.release(1)
    await blocker
    for item, task in tasks.items():
        assert await task == f"done:{item}"


async def test_max_items_splits_batches(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send, max_items=2)
    first = submit(batcher, "a")
    await send.next_call()
    rest = [submit(batcher, item) for item in ("b", "c", "d", "e", "f")]
    await settle()

    send.release(0)
    assert await send.next_call() == ["b", "c"]
    send.release(1)
    assert await send.next_call() == ["d", "e"]
    send.release(2)
    assert await send.next_call() == ["f"]
    send.release(3)
    await first
    assert [await task for task in rest] == ["done:b", "done:c", "done:d", "done:e", "done:f"]


async def test_max_bytes_splits_batches(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send, max_bytes=10)
    first = submit(batcher, "a", size=1)
    await send.next_call()
    rest = [submit(batcher, "b", 4), submit(batcher, "c", 6), submit(batcher, "d", 1)]
    await settle()

    send.release(0)
    assert await send.next_call() == ["b", "c"]  # 4 + 6 = 10 fits exactly
    send.release(1)
    assert await send.next_call() == ["d"]
    send.release(2)
    await first
    assert [await task for task in rest] == ["done:b", "done:c", "done:d"]


async def test_item_larger_than_max_bytes_is_still_sent_alone(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send, max_bytes=10)
    first = submit(batcher, "a")
    await send.next_call()
    rest = [submit(batcher, "big", 50), submit(batcher, "small", 1)]
    await settle()

    send.release(0)
    assert await send.next_call() == ["big"]
    send.release(1)
    assert await send.next_call() == ["small"]
    send.release(2)
    await first
    assert [await task for task in rest] == ["done:big", "done:small"]


async def test_send_exception_reaches_every_submitter_of_that_batch_only(
    send: GatedSend,
) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    failing = [submit(batcher, "b"), submit(batcher, "c")]
    await settle()
    send.release(0)
    await send.next_call()
    later = submit(batcher, "d")
    await settle()

    boom = ConnectionError("core went away")
    send.failures[1] = boom
    send.release(1)
    for task in failing:
        with pytest.raises(ConnectionError) as caught:
            await task
        assert caught.value is boom
    assert await send.next_call() == ["d"]
    send.release(2)
    assert await first == "done:a"
    assert await later == "done:d"


async def test_wrong_number_of_results_fails_the_batch_instead_of_misdelivering(
    send: GatedSend,
) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    batch = [submit(batcher, "b"), submit(batcher, "c")]
    await settle()
    send.release(0)
    await send.next_call()
    send.wrong_count.add(1)
    send.release(1)
    await first
    for task in batch:
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await task


async def test_queue_full_past_max_pending(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send, max_pending=2)
    first = submit(batcher, "a")  # in flight: not pending
    await send.next_call()
    queued = [submit(batcher, "b"), submit(batcher, "c")]
    await settle()
    assert batcher.pending == 2

    with pytest.raises(QueueFull):
        await batcher.submit("d", 1, LONG)
    assert batcher.pending == 2

    send.release(0)
    assert await send.next_call() == ["b", "c"]
    send.release(1)
    await first
    assert [await task for task in queued] == ["done:b", "done:c"]
    # room again once the queue has emptied
    again = submit(batcher, "e")
    assert await send.next_call() == ["e"]
    send.release(2)
    assert await again == "done:e"


async def test_new_submissions_are_refused_once_the_oldest_has_waited_too_long(
    send: GatedSend,
) -> None:
    """Above capacity, latency stays near max_queue_delay: newcomers get QueueFull (503)
    at once instead of queueing behind a backlog they would time out in."""
    now = [100.0]
    batcher: Batcher[str, str] = Batcher(send, max_queue_delay=1.0, clock=lambda: now[0])
    first = submit(batcher, "a")  # in flight: not queued
    await send.next_call()
    queued = submit(batcher, "b")
    await settle()
    now[0] += 0.5
    younger = submit(batcher, "c")  # the oldest has waited 0.5 s: still admitted
    await settle()
    assert batcher.pending == 2
    now[0] += 0.6  # "b" has now waited 1.1 s
    with pytest.raises(QueueFull):
        await batcher.submit("d", 1, LONG)
    assert batcher.pending == 2

    send.release(0)  # the queue moves: "b" and "c" go in the next call
    assert await send.next_call() == ["b", "c"]
    late = submit(batcher, "e")  # the queue is fresh again: admitted
    send.release(1)
    assert await send.next_call() == ["e"]
    send.release(2)
    assert [await first, await queued, await younger, await late] == [
        "done:a",
        "done:b",
        "done:c",
        "done:e",
    ]


async def test_an_abandoned_request_at_the_head_does_not_make_the_queue_look_old(
    send: GatedSend,
) -> None:
    now = [100.0]
    batcher: Batcher[str, str] = Batcher(send, max_queue_delay=1.0, clock=lambda: now[0])
    first = submit(batcher, "a")
    await send.next_call()
    gave_up = submit(batcher, "b")
    await settle()
    gave_up.cancel()  # its client left
    await settle()
    now[0] += 5.0
    fresh = submit(batcher, "c")  # the only one really waiting is new: admitted
    await settle()
    send.release(0)
    assert await send.next_call() == ["c"]
    send.release(1)
    assert [await first, await fresh] == ["done:a", "done:c"]


async def test_submitter_timing_out_while_queued_is_not_sent(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    impatient = submit(batcher, "gave-up", timeout=0.01)
    patient = submit(batcher, "b")

    # The call in flight is held open until the impatient submitter has given up.
    with pytest.raises(TimeoutError):
        await impatient
    send.release(0)
    assert await send.next_call() == ["b"]
    send.release(1)
    assert await first == "done:a"
    assert await patient == "done:b"
    assert "gave-up" not in [item for call in send.calls for item in call]


async def test_queue_holding_only_abandoned_submissions_sends_nothing(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    impatient = submit(batcher, "gave-up", timeout=0.01)
    with pytest.raises(TimeoutError):
        await impatient
    send.release(0)
    assert await first == "done:a"
    await batcher.drain()
    assert send.calls == [["a"]]
    assert batcher.pending == 0


async def test_timeout_after_the_batch_was_sent_leaves_the_others_unharmed(
    send: GatedSend,
) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    impatient = submit(batcher, "b", timeout=0.01)
    patient = submit(batcher, "c")
    await settle()
    send.release(0)
    assert await send.next_call() == ["b", "c"]  # sent before it timed out
    with pytest.raises(TimeoutError):
        await impatient
    send.release(1)
    assert await first == "done:a"
    assert await patient == "done:c"
    after = submit(batcher, "d")
    assert await send.next_call() == ["d"]
    send.release(2)
    assert await after == "done:d"


async def test_cancelled_submitter_while_queued_is_not_sent(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    cancelled = submit(batcher, "cancelled")
    kept = submit(batcher, "b")
    await settle()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    send.release(0)
    assert await send.next_call() == ["b"]
    send.release(1)
    await first
    assert await kept == "done:b"


async def test_max_inflight_allows_concurrent_calls(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send, max_inflight=2)
    a, b = submit(batcher, "a"), submit(batcher, "b")
    assert await send.next_call() == ["a"]
    assert await send.next_call() == ["b"]  # second call starts while the first is open
    c = submit(batcher, "c")
    await settle()
    assert batcher.pending == 1
    send.release(1)
    assert await send.next_call() == ["c"]
    send.release(0)
    send.release(2)
    assert [await a, await b, await c] == ["done:a", "done:b", "done:c"]


async def test_drain_waits_for_calls_in_flight(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    drained = asyncio.create_task(batcher.drain())
    await settle()
    assert not drained.done()

    send.release(0)
    await asyncio.wait_for(drained, LONG)
    assert first.done()
    assert await first == "done:a"


async def test_drain_also_waits_for_the_batch_queued_behind_the_call_in_flight(
    send: GatedSend,
) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    await send.next_call()
    second = submit(batcher, "b")
    await settle()
    drained = asyncio.create_task(batcher.drain())

    send.release(0)
    assert await send.next_call() == ["b"]
    await settle()
    assert not drained.done()
    send.release(1)
    await asyncio.wait_for(drained, LONG)
    assert second.done()
    assert [await first, await second] == ["done:a", "done:b"]


async def test_drain_returns_at_once_when_idle(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    await asyncio.wait_for(batcher.drain(), LONG)
    assert send.calls == []


async def test_queued_bytes_are_capped_too() -> None:
    gate = asyncio.Event()

    async def send(items: list[str]) -> list[str]:
        await gate.wait()
        return items

    batcher: Batcher[str, str] = Batcher(send, max_pending=100, max_pending_bytes=1000)
    first = asyncio.create_task(batcher.submit("a", 10, timeout=5))  # sent at once
    await asyncio.sleep(0)
    queued = asyncio.create_task(batcher.submit("b", 900, timeout=5))  # waits: 900 bytes
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await batcher.submit("c", 200, timeout=5)  # 900 + 200 > 1000
    gate.set()
    assert await first == "a" and await queued == "b"
    assert await batcher.submit("c", 200, timeout=5) == "c"  # room again once sent


def submit_many(
    batcher: Batcher[str, str], items: list[str], size: int = 1
) -> asyncio.Task[list[str]]:
    return asyncio.create_task(batcher.submit_many(items, size, LONG))


async def test_a_group_shares_a_call_with_single_items_and_gets_its_own_results(
    send: GatedSend,
) -> None:
    batcher: Batcher[str, str] = Batcher(send)
    first = submit(batcher, "a")
    assert await send.next_call() == ["a"]
    single = submit(batcher, "b")
    group = submit_many(batcher, ["c", "d", "e"])
    await settle()
    send.release(0)
    assert await send.next_call() == ["b", "c", "d", "e"]
    send.release(1)
    assert await first == "done:a"
    assert await single == "done:b"
    assert await group == ["done:c", "done:d", "done:e"]


async def test_a_group_is_never_split_and_goes_alone_when_over_the_caps(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send, max_items=2)
    first = submit(batcher, "a")
    assert await send.next_call() == ["a"]
    before = submit(batcher, "b")
    big = submit_many(batcher, ["c", "d", "e"])  # larger than max_items: still one call
    after = submit(batcher, "f")
    await settle()
    for index in range(4):
        send.release(index)
        if index < 3:
            await send.next_call()
    await asyncio.gather(first, before, big, after)
    assert send.calls == [["a"], ["b"], ["c", "d", "e"], ["f"]]


class Ticks:
    """A clock that moves `step` seconds each time it is read: every call lasts that
    long at least, so the wait for its senders is bounded by `max_gather_delay`, never
    by a call of microseconds."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def senders_then_late(
    batcher: Batcher[str, str], send: GatedSend, late_size: int = 1
) -> asyncio.Task[str]:
    """x goes alone; a and b go together; y (of `late_size` bytes) arrives while they
    are stored. Returns y's task once the a-b call (index 1) is answered."""
    lone = submit(batcher, "x")
    assert await send.next_call() == ["x"]
    pair = [submit(batcher, item) for item in ("a", "b")]
    await settle()
    send.release(0)
    assert await send.next_call() == ["a", "b"]
    late = submit(batcher, "y", size=late_size)
    await settle()
    send.release(1)
    assert [await lone, *[await t for t in pair]] == ["done:x", "done:a", "done:b"]
    return late


async def test_the_call_after_a_returned_one_waits_for_its_senders_to_come_back(
    send: GatedSend,
) -> None:
    """A request that arrives just before a call returns does not go alone: calls would
    then alternate between all the senders and one (one commit for one event)."""
    batcher: Batcher[str, str] = Batcher(send, max_gather_delay=LONG, clock=Ticks())

    async def sender(name: str) -> list[str]:  # a connection: answered, it sends again
        return [
            await batcher.submit(f"{name}1", 1, LONG),
            await batcher.submit(f"{name}2", 1, LONG),
        ]

    lone = submit(batcher, "x")
    assert await send.next_call() == ["x"]
    senders = [asyncio.create_task(sender(name)) for name in "abc"]
    await settle()
    send.release(0)
    assert await send.next_call() == ["a1", "b1", "c1"]
    late = submit(batcher, "y")  # arrives while a1-c1 are being stored
    await settle()
    send.release(1)
    # Not ["y"] alone, then ["a2", "b2", "c2"]: one call for all four.
    assert await send.next_call() == ["y", "a2", "b2", "c2"]
    send.release(2)
    assert await lone == "done:x" and await late == "done:y"
    assert [await task for task in senders] == [[f"done:{n}1", f"done:{n}2"] for n in "abc"]
    assert len(send.calls) == 3


async def test_a_request_waiting_for_senders_that_do_not_come_back_goes_within_the_bound(
    send: GatedSend, monkeypatch: pytest.MonkeyPatch
) -> None:
    gather = 0.5
    batcher: Batcher[str, str] = Batcher(send, max_gather_delay=gather, clock=Ticks())
    # The batcher's own timers (not its requests' timeouts): how long it waits for senders.
    loop = asyncio.get_running_loop()
    call_later = loop.call_later
    waits: list[float] = []

    def recording(delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) is batcher:
            waits.append(delay)
        return call_later(delay, callback, *args)

    monkeypatch.setattr(loop, "call_later", recording)
    late = await senders_then_late(batcher, send)
    await settle()
    assert send.no_new_call()  # y waits for a's and b's senders, who never send again
    assert await send.next_call() == ["y"]
    assert waits == [gather]  # the bound, not the a-b call's length (seconds, by Ticks)
    send.release(2)
    assert await late == "done:y"


async def test_after_a_short_call_the_next_does_not_wait(send: GatedSend) -> None:
    """The wait is at most as long as the returned call took: a call answered
    at once (an idle store) makes nobody wait."""
    batcher: Batcher[str, str] = Batcher(send, max_gather_delay=LONG, clock=lambda: 7.0)
    late = await senders_then_late(batcher, send)
    await settle()
    assert send.calls[-1] == ["y"]  # sent without waiting
    send.release(2)
    assert await late == "done:y"


async def test_a_lone_client_sending_groups_one_at_a_time_never_waits(send: GatedSend) -> None:
    """Senders are counted in requests: an SDK batch of 3 events is one sender."""
    batcher: Batcher[str, str] = Batcher(send, max_gather_delay=LONG, clock=Ticks())
    first = asyncio.create_task(batcher.submit_many(["g1", "g2", "g3"], 3, LONG))
    assert await send.next_call() == ["g1", "g2", "g3"]
    send.release(0)
    assert await first == ["done:g1", "done:g2", "done:g3"]
    second = asyncio.create_task(batcher.submit_many(["h1", "h2"], 2, LONG))
    await settle()
    assert send.calls[-1] == ["h1", "h2"]  # sent without waiting
    send.release(1)
    assert await second == ["done:h1", "done:h2"]


async def test_a_queue_holding_a_whole_call_does_not_wait(send: GatedSend) -> None:
    batcher: Batcher[str, str] = Batcher(send, max_gather_delay=LONG, clock=Ticks(), max_bytes=10)
    big = await senders_then_late(batcher, send, late_size=10)  # the byte cap of one call
    await settle()
    assert send.calls[-1] == ["y"]  # sent without waiting
    send.release(2)
    assert await big == "done:y"


async def test_drain_sends_a_call_that_waits_for_its_senders_at_once(send: GatedSend) -> None:
    # Calls last 100 s by this clock: left to itself, y would wait LONG.
    batcher: Batcher[str, str] = Batcher(send, max_gather_delay=LONG, clock=Ticks(100.0))
    late = await senders_then_late(batcher, send)
    await settle()
    assert send.no_new_call()  # y waits for a's and b's senders
    drained = asyncio.create_task(batcher.drain())
    # Shutting down, nobody is coming back: y goes at once.
    assert await asyncio.wait_for(send.next_call(), LONG / 2) == ["y"]
    await settle()
    assert not drained.done()
    send.release(2)
    await asyncio.wait_for(drained, LONG)
    assert await late == "done:y"
