"""Waiting in tests for what happens on its own time: a background task, a thread,
another process.

`eventually` polls a condition until it holds or a deadline passes, then fails saying
what it waited for. The deadline only decides how long a broken build takes to fail: a
healthy run never comes near it, and nothing passes or fails by how many polls fitted
into some interval. Orderings the test controls itself need no polling: wait on an
event, or `settle()` for tasks that are already runnable.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

TIMEOUT_S = 10.0
# Polls start at once and back off: a condition that holds a moment later is seen a
# moment later, and a slow one (an RPC, a subprocess) is not polled in a tight loop.
_FIRST_PAUSE_S = 0.001
_LONGEST_PAUSE_S = 0.05


def _failure(what: str | Callable[[], str], timeout: float) -> AssertionError:
    described = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g} s waiting for {described}")


# The value returned is the predicate's first truthy one: never None.
@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]],
    *,
    what: str | Callable[[], str],
    timeout: float = ...,
) -> T: ...
@overload
async def eventually(
    predicate: Callable[[], T | None], *, what: str | Callable[[], str], timeout: float = ...
) -> T: ...
async def eventually(
    predicate: Callable[[], object],
    *,
    what: str | Callable[[], str],
    timeout: float = TIMEOUT_S,
) -> object:
    """Call `predicate` (plain or async) until it returns something truthy; return that.

    `what` names the awaited condition for the failure message; a callable is called
    then, to describe the state at the deadline (what was seen so far). An async
    check that itself takes longer than `timeout` is cancelled and fails likewise.
    """
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    pause = 0.0  # the first retry is a bare turn of the loop
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            # One check that hangs (a call nobody answers) fails the same way.
            check = asyncio.timeout(timeout)
            try:
                async with check:
                    result = await result
            except TimeoutError:
                if check.expired():
                    raise _failure(what, timeout) from None
                raise
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _failure(what, timeout)
        await asyncio.sleep(pause)
        pause = min(max(pause * 2, _FIRST_PAUSE_S), _LONGEST_PAUSE_S)


def eventually_sync(
    predicate: Callable[[], T | None], *, what: str | Callable[[], str], timeout: float = TIMEOUT_S
) -> T:
    """`eventually` for tests without an event loop (a thread, a subprocess)."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE_S
    while not (result := predicate()):
        if time.monotonic() >= deadline:
            raise _failure(what, timeout)
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE_S)
    return result


async def settle(turns: int = 10) -> None:
    """Let every task that is ready run until it blocks: turns of the loop, no clock."""
    for _ in range(turns):
        await asyncio.sleep(0)
