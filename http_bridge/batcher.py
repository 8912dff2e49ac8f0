"""Coalesces concurrent webhook requests into IngestBatch calls.

One gRPC call per event would cap the bridge at a few thousand events/s, so requests
queue while a call is in flight and the next call carries everything queued: idle, an
event goes alone at once; busy, batches grow with load, with no timer to tune. After a
call returns, the next one waits briefly (at most as long as that call took, and
`max_gather_delay`) for the returned call's senders, so that calls do not alternate
between many events and one. `submit_many` keeps a group (one SDK batch) in one call;
once the oldest queued request has waited `max_queue_delay`, new ones are refused
(QueueFull: 503 + Retry-After), so latency stays bounded above capacity. While `send`
runs, its items' tags (request ids) are in `BATCH_TAGS`. Why each rule is as it is:
docs/design.md, "The bridge's batcher".
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

BATCH_TAGS: Final = contextvars.ContextVar[tuple[str, ...]]("inlet_batch_tags", default=())


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class QueueFull(Exception):
    """More requests are waiting than the bridge is allowed to hold."""


class Batcher(Generic[Item, Result]):
    """`await submit(item, size)` → that item's result from `send(batch)`."""

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        *,
        max_items: int = 500,
        max_bytes: int = 8 * 1024 * 1024,
        max_inflight: int = 1,
        max_pending: int = 10_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_queue_delay: float = float("inf"),
        max_gather_delay: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`max_queue_delay`: once the oldest queued request has waited this long (s), new
        ones are refused (QueueFull) until the queue moves again; `clock` (the running
        loop's by default) measures it, and calls' durations. `max_gather_delay`: the
        longest (s) the call after a returned one waits for its senders (0: never)."""
        self._send = send
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_inflight = max_inflight
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._max_queue_delay = max_queue_delay
        self._max_gather_delay = max_gather_delay
        self._clock = clock
        self._pending_bytes = 0
        # (items, size, future, tag, queued at)
        self._queue: deque[tuple[list[Item], int, asyncio.Future[list[Result]], str, float]] = (
            deque()
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._queued_items = 0  # in the queue, including abandoned ones not yet dropped
        # While the next call waits for the senders of the previous one: the callback or
        # timer that ends the wait (see _next_call), and the queue length that ends it sooner.
        self._gather_timer: asyncio.Handle | None = None
        self._gather_target = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def submit(self, item: Item, size: int, timeout: float, tag: str = "") -> Result:
        """Queue `item` (of `size` bytes, tagged `tag`) and wait up to `timeout` s for
        its result.

        Raises:
            QueueFull: too many requests are already waiting.
            TimeoutError: no result within `timeout`.
            Exception: whatever `send` raised for the batch holding this item.
        """
        return (await self.submit_many([item], size, timeout, tag))[0]

    async def submit_many(
        self, items: list[Item], size: int, timeout: float, tag: str = ""
    ) -> list[Result]:
        """Queue `items` (of `size` bytes in all) to go in one call; their results, in order.

        Raises the same as `submit`.
        """
        loop = asyncio.get_running_loop()
        now = self._clock() if self._clock is not None else loop.time()
        while self._queue and self._queue[0][2].done():  # its request gave up: not waiting
            self._pop()
        if (
            len(self._queue) >= self._max_pending
            or self._pending_bytes + size > self._max_pending_bytes
            or (self._queue and now - self._queue[0][4] > self._max_queue_delay)
        ):
            raise QueueFull()
        future: asyncio.Future[list[Result]] = loop.create_future()
        self._queue.append((items, size, future, tag, now))
        self._pending_bytes += size
        self._queued_items += len(items)
        if self._gather_timer is None:
            self._dispatch()
        elif len(self._queue) >= self._gather_target or self._full():
            self._end_gather()
        # A timer on the future itself: cheaper than asyncio.wait_for on the hot path.
        # Once expired the future is done, so a still-queued item is skipped.
        expiry = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()
            future.cancel()  # no-op when done; marks the item abandoned if we were cancelled

    async def drain(self) -> None:
        """Wait until every batch in flight, or waiting for its senders, has been answered
        (for shutdown)."""
        while self._inflight or self._gather_timer is not None:
            if self._gather_timer is not None:
                self._end_gather()  # shutting down: nobody is coming back
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)

    def _pop(self) -> tuple[list[Item], int, asyncio.Future[list[Result]], str, float]:
        entry = self._queue.popleft()
        self._pending_bytes -= entry[1]
        self._queued_items -= len(entry[0])
        return entry

    def _dispatch(self) -> None:
        while len(self._inflight) < self._max_inflight and self._queue:
            batch = self._take_batch()
            if not batch:
                return
            task = asyncio.create_task(self._call(batch), name="inlet-ingest-batch")
            self._inflight.add(task)

    def _take_batch(self) -> list[tuple[list[Item], asyncio.Future[list[Result]], str]]:
        batch: list[tuple[list[Item], asyncio.Future[list[Result]], str]] = []
        count = size = 0
        while self._queue:
            items, item_size, future, tag, _ = self._queue[0]
            if future.done():  # its request gave up while queued
                self._pop()
                continue
            if batch and (
                count + len(items) > self._max_items or size + item_size > self._max_bytes
            ):
                break
            self._pop()
            batch.append((items, future, tag))
            count += len(items)
            size += item_size
        return batch

    async def _call(
        self, batch: list[tuple[list[Item], asyncio.Future[list[Result]], str]]
    ) -> None:
        # This task's own context: the tags of the items `send` gets, in order.
        BATCH_TAGS.set(tuple(tag for items, _, tag in batch for _ in items))
        clock = self._clock or asyncio.get_running_loop().time
        started = clock()
        sent = [item for items, _, _ in batch for item in items]
        try:
            results = await self._send(sent)
            if len(results) != len(sent):
                raise RuntimeError(f"{len(results)} results for {len(sent)} items")
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the failure
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for items, future, _ in batch:
                end = start + len(items)
                if not future.done():
                    future.set_result(list(results[start:end]))
                start = end
        finally:
            for _, future, _ in batch:  # only if this task itself was cancelled
                if not future.done():
                    future.set_exception(ConnectionError("the batch call was cancelled"))
            task = asyncio.current_task()
            if task is not None:
                self._inflight.discard(task)
            self._next_call(len(batch), clock() - started)

    def _next_call(self, returned: int, took: float) -> None:
        """A call of `returned` requests that took `took` s has been answered: send the
        next batch now, or once this one's senders are back (see above)."""
        wait = min(self._max_gather_delay, took)  # never longer than the call it saves
        if (
            returned < 2
            or wait <= 0
            or self._gather_timer is not None
            or len(self._queue) >= returned  # the next call is as large already
            or self._full()
        ):
            self._dispatch()
            return
        self._gather_target = len(self._queue) + returned
        # The bound is for the senders' round trip, not for this loop's own work, which
        # on a saturated core takes longer than the bound itself: the clock starts once
        # the answers are written (the callback runs after the waiting handlers, woken
        # before it), and when it runs out, the wait ends behind the handlers of the
        # requests read meanwhile (the same way), so those still join the call.
        loop = asyncio.get_running_loop()
        self._gather_timer = loop.call_soon(self._arm_gather, wait)

    def _arm_gather(self, wait: float) -> None:
        loop = asyncio.get_running_loop()
        self._gather_timer = loop.call_later(wait, self._gather_ran_out)

    def _gather_ran_out(self) -> None:
        self._gather_timer = asyncio.get_running_loop().call_soon(self._end_gather)

    def _full(self) -> bool:
        """The queue holds a whole call's worth: no point waiting for more."""
        return self._queued_items >= self._max_items or self._pending_bytes >= self._max_bytes

    def _end_gather(self) -> None:
        if self._gather_timer is not None:
            self._gather_timer.cancel()
            self._gather_timer = None
        self._dispatch()
