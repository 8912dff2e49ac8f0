"""service/store/group_commit.py: one blocking commit at a time, covering everything queued.

The fake commit runs in a one-thread executor and blocks until the test releases it,
so every ordering below is forced by the test, never by timing.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.store.group_commit import GroupCommitter
from tests.waiting import settle

LONG = 5.0  # no test should get near this; it only turns a hang into a failure


class GatedCommit:
    """A blocking `commit(items)` that waits for `release(n)`; records every group."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._started: queue.Queue[int] = queue.Queue()
        self._cond = threading.Condition()
        self._released: set[int] = set()
        self._closed = False

    def __call__(self, items: list[str]) -> list[str]:
        with self._cond:
            index = len(self.calls)
            self.calls.append(list(items))
            self._started.put(index)
            self._cond.wait_for(lambda: index in self._released or self._closed, LONG)
        if any(item.startswith("boom") for item in items):
            raise ValueError(f"commit {index} failed")
        return [f"{item}!" for item in items]

    async def next_call(self) -> list[str]:
        """Wait (off the loop) for the next commit to start; return its items."""
        index = await asyncio.to_thread(self._started.get, True, LONG)
        return self.calls[index]

    def release(self, index: int) -> None:
        with self._cond:
            self._released.add(index)
            self._cond.notify_all()

    def no_new_call(self) -> bool:
        return self._started.empty()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-commit")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
async def commit(executor: ThreadPoolExecutor) -> AsyncIterator[GatedCommit]:
    fake = GatedCommit()
    yield fake
    fake.close()


def submit(committer: GroupCommitter[str, str], *items: str) -> asyncio.Task[list[str]]:
    return asyncio.create_task(committer.submit(list(items)))


async def test_lone_submission_commits_at_once(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    task = submit(committer, "a", "b")
    assert await commit.next_call() == ["a", "b"]
    commit.release(0)
    assert await task == ["a!", "b!"]


async def test_submissions_queued_during_a_commit_go_into_one_next_commit(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    first = submit(committer, "a")
    assert await commit.next_call() == ["a"]

    b = submit(committer, "b1", "b2")
    c = submit(committer, "c")
    d = submit(committer, "d1", "d2", "d3")
    await settle()
    assert commit.no_new_call()  # one commit at a time

    commit.release(0)
    assert await commit.next_call() == ["b1", "b2", "c", "d1", "d2", "d3"]
    commit.release(1)
    assert await first == ["a!"]
    assert await b == ["b1!", "b2!"]
    assert await c == ["c!"]
    assert await d == ["d1!", "d2!", "d3!"]
    assert len(commit.calls) == 2


async def test_a_failing_submission_is_retried_alone_so_the_others_commit(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    first = submit(committer, "a")
    await commit.next_call()
    poisoned, innocent = submit(committer, "boom"), submit(committer, "c")
    await settle()
    commit.release(0)
    assert await commit.next_call() == ["boom", "c"]
    commit.release(1)
    # The shared transaction failed on bad data: each submission is committed alone.
    assert await commit.next_call() == ["boom"]
    commit.release(2)
    assert await commit.next_call() == ["c"]
    commit.release(3)
    with pytest.raises(ValueError, match="commit 2 failed"):
        await poisoned
    assert await innocent == ["c!"]
    assert await first == ["a!"]


async def test_a_transient_failure_fails_the_whole_group_without_retrying(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(
        commit, executor, transient=lambda exc: isinstance(exc, ValueError)
    )
    first = submit(committer, "a")
    await commit.next_call()
    group = [submit(committer, "boom"), submit(committer, "c")]
    await settle()
    commit.release(0)
    assert await commit.next_call() == ["boom", "c"]
    later = submit(committer, "d")
    await settle()
    commit.release(1)
    for task in group:  # the store is down: every waiter hears it, retries later
        with pytest.raises(ValueError, match="commit 1 failed"):
            await task
    assert await commit.next_call() == ["d"]  # the committer goes on after a failure
    commit.release(2)
    assert await first == ["a!"]
    assert await later == ["d!"]


async def test_failed_first_group_does_not_fail_the_group_queued_behind_it(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    failing = submit(committer, "boom")
    await commit.next_call()
    queued = submit(committer, "b")
    await settle()
    commit.release(0)
    with pytest.raises(ValueError):
        await failing
    assert await commit.next_call() == ["b"]
    commit.release(1)
    assert await queued == ["b!"]


async def test_max_items_caps_a_group_without_splitting_a_submission(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor, max_items=3)
    first = submit(committer, "a")
    await commit.next_call()
    b = submit(committer, "b1", "b2")
    c = submit(committer, "c1", "c2")
    d = submit(committer, "d")
    await settle()

    commit.release(0)
    assert await commit.next_call() == ["b1", "b2"]  # b + c would be 4 > 3
    commit.release(1)
    assert await commit.next_call() == ["c1", "c2", "d"]
    commit.release(2)
    await first
    assert [await b, await c, await d] == [["b1!", "b2!"], ["c1!", "c2!"], ["d!"]]


async def test_submission_larger_than_max_items_is_committed_whole(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor, max_items=2)
    big = submit(committer, "a", "b", "c", "d")
    assert await commit.next_call() == ["a", "b", "c", "d"]
    commit.release(0)
    assert await big == ["a!", "b!", "c!", "d!"]


async def test_empty_submission_returns_empty_without_a_commit(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    assert await committer.submit([]) == []
    assert commit.calls == []


async def test_a_caller_giving_up_does_not_cancel_the_commit_others_wait_for(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    first = submit(committer, "a")
    await commit.next_call()
    quitter = submit(committer, "b")
    stayer = submit(committer, "c")
    await settle()

    first.cancel()  # its commit is already running
    quitter.cancel()  # still queued
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(asyncio.CancelledError):
        await quitter

    commit.release(0)
    assert await commit.next_call() == ["b", "c"]
    commit.release(1)
    assert await stayer == ["c!"]


async def test_wait_idle_waits_until_everything_submitted_is_committed(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    first = submit(committer, "a")
    await commit.next_call()
    second = submit(committer, "b")
    await settle()
    idle = asyncio.create_task(committer.wait_idle())

    commit.release(0)
    assert await commit.next_call() == ["b"]
    await settle()
    assert not idle.done()
    commit.release(1)
    await asyncio.wait_for(idle, LONG)
    assert first.done() and second.done()
    assert [await first, await second] == [["a!"], ["b!"]]


async def test_wait_idle_returns_at_once_when_nothing_was_submitted(
    commit: GatedCommit, executor: ThreadPoolExecutor
) -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(commit, executor)
    await asyncio.wait_for(committer.wait_idle(), LONG)
    assert commit.calls == []
