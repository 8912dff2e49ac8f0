"""Group commit: many concurrent writers, one transaction at a time.

A commit with `synchronous=FULL` costs an fsync (~0.1-1 ms here); one per event
caps ingestion at a few thousand events/s, one per group does not (see docs/design.md,
"Group commit"). The policy is adaptive and needs no timer: while one commit runs,
new submissions queue; the next commit takes everything queued (up to a cap).
Idle, a lone event commits at once; busy, groups grow with the load.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Committer(Generic[T, R]):
    """The queueing and grouping; subclasses say how one group's commit is run."""

    def __init__(
        self,
        max_items: int = 5000,
        transient: Callable[[BaseException], bool] = lambda exc: False,
        max_in_flight: int = 1,
    ) -> None:
        """`transient(exc)`: the failure is the store's, not the data's (no point retrying
        submissions one by one; every waiter gets it). `max_in_flight`: how many groups
        may commit at once (1 where the database has one writer)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._transient = transient
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._queue: deque[tuple[Sequence[T], asyncio.Future[list[R]]]] = deque()
        self._drainers: set[asyncio.Task[None]] = set()

    def _call(self, items: list[T]) -> Awaitable[list[R]]:
        raise NotImplementedError

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Commit `items` as part of the next group; return their results in order."""
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, future))
        # done(), not membership: a drainer that just found the queue empty has ended,
        # though its done-callback has not run yet.
        if sum(not task.done() for task in self._drainers) < self._max_in_flight:
            drainer = asyncio.create_task(self._drain(), name="inlet-group-commit")
            self._drainers.add(drainer)
            drainer.add_done_callback(self._drainers.discard)
        # shield: a caller that gives up must not cancel the commit others wait for.
        return await asyncio.shield(future)

    async def wait_idle(self) -> None:
        """Wait until everything submitted so far is committed (for shutdown)."""
        # asyncio.wait never cancels what it waits for (a caller that gives up must not
        # cancel commits others wait for).
        while busy := [task for task in self._drainers if not task.done()]:
            await asyncio.wait(busy)

    async def _drain(self) -> None:
        while self._queue:
            group: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
            size = 0
            while self._queue and (not group or size + len(self._queue[0][0]) <= self._max_items):
                items, future = self._queue.popleft()
                group.append((items, future))
                size += len(items)
            flat = [item for items, _ in group for item in items]
            try:
                results = await self._call(flat)
            except Exception as exc:  # noqa: BLE001 - handed to the waiters
                if len(group) == 1 or self._transient(exc):
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    # One submission's bad data must not fail the others that happened
                    # to share its transaction: commit each on its own.
                    await self._commit_one_by_one(group)
                continue
            start = 0
            for items, future in group:
                if not future.done():
                    future.set_result(results[start : start + len(items)])
                start += len(items)

    async def _commit_one_by_one(
        self, group: list[tuple[Sequence[T], asyncio.Future[list[R]]]]
    ) -> None:
        for items, future in group:
            try:
                result = await self._call(list(items))
            except Exception as exc:  # noqa: BLE001 - handed to this waiter only
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)


class GroupCommitter(_Committer[T, R]):
    """Runs `commit(items) -> results` (blocking, one result per item) in `executor`,
    one call at a time, each call covering every submission queued meanwhile."""

    def __init__(
        self,
        commit: Callable[[list[T]], list[R]],
        executor: Executor,
        max_items: int = 5000,
        transient: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        super().__init__(max_items, transient)
        self._commit = commit
        self._executor = executor

    def _call(self, items: list[T]) -> Awaitable[list[R]]:
        return asyncio.get_running_loop().run_in_executor(self._executor, self._commit, items)


class AsyncGroupCommitter(_Committer[T, R]):
    """The same policy for a coroutine `commit(items)` (an async driver, PostgreSQL):
    up to `max_in_flight` commits at once, each new one taking everything queued
    meanwhile (the database flushes concurrent commits' log together)."""

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[list[R]]],
        max_items: int = 5000,
        transient: Callable[[BaseException], bool] = lambda exc: False,
        max_in_flight: int = 1,
    ) -> None:
        super().__init__(max_items, transient, max_in_flight)
        self._commit = commit

    def _call(self, items: list[T]) -> Awaitable[list[R]]:
        return self._commit(items)
