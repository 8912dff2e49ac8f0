"""What only PostgreSQL has to get right: several cores committing at once.

Cursors: transactions on different cores commit in any order, so a seq handed out by
a plain sequence can become visible before a smaller one, and a subscriber whose
cursor passed it would never see the smaller one. Wake-ups: a commit on one core
must wake the streams of another (NOTIFY), also after the database restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service.store.base import SUPPRESSED, EventQuery, EventWrite, WriteResult
from service.store.postgres import PostgresOptions, PostgresStore
from tests.store.test_conformance import at, track, write

LONG = 10.0


@pytest.fixture
async def cores(pg_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    options = PostgresOptions(pool_size=4, timeout_s=5.0, listener_check_s=0.2)
    one, two = PostgresStore(pg_dsn, options), PostgresStore(pg_dsn, options)
    await one.open()
    await two.open()
    yield one, two
    await one.close()
    await two.close()


async def until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + LONG
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def held_before_commit(
    store: PostgresStore, writes: list[EventWrite]
) -> tuple[asyncio.Task[list[WriteResult]], asyncio.Event]:
    """`writes` on `store`, its transaction held just before COMMIT until the event is set."""
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        store.before_commit = None
        held.set()
        await release.wait()

    store.before_commit = hold
    task = asyncio.create_task(store.write_events(writes))
    await asyncio.wait_for(held.wait(), LONG)
    return task, release


async def until_blocked(pg_dsn: str, task: asyncio.Task[Any], what: str) -> None:
    """Until `task` waits for a lock in the database (or is done)."""
    watcher = await asyncpg.connect(pg_dsn)
    try:

        async def waits_or_is_done() -> bool:
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return task.done() or waiting > 0

        await until(waits_or_is_done, what)
    finally:
        await watcher.close()


async def test_a_reader_never_skips_a_transaction_that_commits_after_a_later_one(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    # Core one's transaction has its seq and its row, and is held just before COMMIT.
    first, release = await held_before_commit(one, [write(acme, track("earlier"))])
    # Core two's transaction starts later. With a plain sequence it would take the next
    # number and commit now; here it must wait for core one's to commit.
    second = asyncio.create_task(two.write_events([write(acme, track("later"))]))
    await until_blocked(pg_dsn, second, "core two's transaction to block or commit")
    # A subscriber reads now, between the two commits, and keeps its cursor.
    seen = await one.list_events(EventQuery(acme, after=0))
    cursor = max((r.seq for r in seen), default=0)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), LONG)
    seen += await one.list_events(EventQuery(acme, after=cursor))
    assert [r.message_id for r in seen] == ["earlier", "later"]
    assert seen[0].seq < seen[1].seq


async def test_a_late_event_racing_its_users_delete_on_another_core_is_suppressed(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    """Core two checks the deleted ids as its statement's snapshot saw them, taken while
    core one's delete was not committed yet: it must notice, once it has the counter's
    lock, that a deletion committed meanwhile, and check again."""
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    await one.write_events([write(acme, at(track("old", "u1"), 0))])
    deleting, release = await held_before_commit(
        one, [write(acme, at({"type": "delete", "userId": "u1", "messageId": "del"}, 5))]
    )
    late = asyncio.create_task(two.write_events([write(acme, at(track("old", "u1"), 0))]))
    await until_blocked(pg_dsn, late, "core two's transaction to wait for core one's")
    release.set()
    assert isinstance((await asyncio.wait_for(deleting, LONG))[0], int)
    assert await asyncio.wait_for(late, LONG) == [SUPPRESSED]
    assert await one.get_event_payload(acme, "old") is None


async def test_concurrent_groups_on_two_cores_commit_in_seq_order(
    cores: tuple[PostgresStore, PostgresStore],
) -> None:
    """A subscriber polling while both cores write never sees a seq appear below its cursor."""
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    done = asyncio.Event()
    skipped: list[int] = []
    seen: set[int] = set()

    async def subscriber() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            page = await one.list_events(EventQuery(acme, after=cursor, limit=1000))
            seen.update(r.seq for r in page)
            cursor = max([cursor, *(r.seq for r in page)])
            if finished and not page:
                return
            await asyncio.sleep(0)

    async def writer(store: PostgresStore, name: str) -> None:
        for n in range(40):
            await store.write_events([write(acme, track(f"{name}-{n}-{i}")) for i in range(3)])

    reading = asyncio.create_task(subscriber())
    await asyncio.gather(writer(one, "a"), writer(two, "b"), writer(one, "c"), writer(two, "d"))
    done.set()
    await asyncio.wait_for(reading, LONG)
    every = {r.seq for r in await one.list_events(EventQuery(acme, limit=10_000))}
    skipped = sorted(every - seen)
    assert len(every) == 480 and not skipped


async def test_a_commit_on_one_core_wakes_the_streams_of_another(
    cores: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = cores
    await asyncio.wait_for(two.listening.wait(), LONG)
    acme = (await one.ensure_account("acme")).id
    woken = two.commits.current()
    await one.write_events([write(acme, track("cross"))])
    await asyncio.wait_for(woken.wait(), LONG)  # NOTIFY, long before any poll


async def test_the_listener_reconnects_after_the_database_drops_it(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    one, two = cores
    await asyncio.wait_for(two.listening.wait(), LONG)
    connections = two.listens
    admin = await asyncpg.connect(pg_dsn)
    try:
        # What a server restart does to every session: terminate them (all of this
        # database's, the pools' too).
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()

    async def relistening() -> bool:
        return two.listens > connections and two.listening.is_set()

    await until(relistening, "the listener to reconnect")
    acme = (await _retry(lambda: one.ensure_account("acme"))).id
    woken = two.commits.current()
    await _retry(lambda: one.write_events([write(acme, track("after-restart"))]))
    await asyncio.wait_for(woken.wait(), LONG)


async def _retry(call: object) -> object:
    """The first call after a restart may meet a pooled connection that died: 503 once."""
    from service.errors import StoreUnavailable

    for _ in range(3):
        try:
            return await call()  # type: ignore[operator]
        except StoreUnavailable:
            continue
    return await call()  # type: ignore[operator]
