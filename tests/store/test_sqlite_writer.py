"""SQLite's writer: event groups insert on the event loop and commit on the writer thread.

What a partner relies on: the loop keeps answering HTTP while another process holds
the database's write lock, and nothing is stored twice or half-written whichever
thread a group ends up on.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Self

import pytest

from service.errors import StoreUnavailable
from service.store.base import EventWrite
from service.store.sqlite import SqliteStore, WriterLock
from tests.store.test_conformance import at, identify, track, write
from tests.waiting import settle

# Longer than any healthy wait for the event loop below; shorter than `patient_store`'s
# busy timeout, so that a loop blocked behind a lock is freed by the watchdog (and the
# test fails saying so) rather than by the store giving up.
WATCHDOG_S = 10.0


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "inlet.db", busy_timeout_ms=3000)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def patient_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """Waits for another process's write lock longer than the watchdog takes to free it."""
    store = SqliteStore(tmp_path / "inlet.db", busy_timeout_ms=int(3 * WATCHDOG_S * 1000))
    await store.open()
    yield store
    await store.close()


class HeldByAnother:
    """Locks another process holds (SQLite's write lock, the siblings' file lock) until
    the test lets go of them from the event loop: code that blocks the loop while it waits
    for them never finishes. Proof the loop was free is thus that `release()` ran at all
    while a write waited; a watchdog thread lets go after WATCHDOG_S instead, so a blocked
    loop fails the test instead of hanging it."""

    def __init__(self, let_go: Callable[[], object]) -> None:
        self._let_go = let_go
        self._mutex = threading.Lock()
        self._held = True
        self.watchdog_fired = False
        self._watchdog = threading.Timer(WATCHDOG_S, self._release, kwargs={"watchdog": True})

    def __enter__(self) -> Self:
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchdog.cancel()
        self._release()

    def _release(self, watchdog: bool = False) -> None:
        with self._mutex:
            if self._held:
                self._held = False
                self.watchdog_fired = watchdog
                self._let_go()

    def release(self) -> None:
        """Let go, from the event loop."""
        self._release()
        assert not self.watchdog_fired, "the event loop was blocked behind the lock"


async def waits_for_the_lock(store: SqliteStore) -> asyncio.Event:
    """An event set (through the event loop) once the store's writer thread starts a
    BEGIN IMMEDIATE: then it waits there for the lock another process holds. Call it
    while the writer thread is idle; the callback stays for the store's life (unset
    while the thread runs a statement, it would deadlock: unsetting holds the GIL while
    it waits for the connection, and the callback waits for the GIL)."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    began = asyncio.Event()

    def traced(statement: str) -> None:
        if statement == "BEGIN IMMEDIATE" and threading.get_ident() != loop_thread:
            loop.call_soon_threadsafe(began.set)

    await store.use_writer(lambda conn: conn.set_trace_callback(traced))
    return began


async def test_the_loop_runs_while_another_process_holds_the_write_lock(
    patient_store: SqliteStore, tmp_path: Path
) -> None:
    acme = (await patient_store.ensure_account("acme")).id
    other = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another core on the same file, mid-commit
    waiting = await waits_for_the_lock(patient_store)
    with HeldByAnother(lambda: other.execute("COMMIT")) as lock:
        writing = asyncio.create_task(patient_store.write_events([write(acme, track("w-1"))]))
        # The loop hears that the writer thread waits for the lock, and then lets go of
        # the lock itself: it was free the whole time the write waited.
        await asyncio.wait_for(waiting.wait(), WATCHDOG_S)
        assert not writing.done()  # waiting for the lock, on the writer thread
        lock.release()
    other.close()
    sequences = await writing
    assert sequences[0] is not None
    assert await patient_store.count_events(acme) == 1


async def test_groups_and_other_writes_never_share_a_transaction(sqlite_store: SqliteStore) -> None:
    """Event groups (on the loop) and key/account jobs (on the writer thread) at once."""
    acme = (await sqlite_store.ensure_account("acme")).id
    groups = [
        sqlite_store.write_events(
            [write(acme, track(f"g{g}-{i}", user=f"u{i}")) for i in range(20)]
        )
        for g in range(20)
    ]
    accounts = [sqlite_store.ensure_account(f"acct-{n}") for n in range(20)]
    profiles = [
        sqlite_store.write_events(
            [write(acme, identify(f"id-{n}", "2026-01-01T00:00:00Z", "u1", n=n))]
        )
        for n in range(10)
    ]
    results = await asyncio.gather(*groups, *accounts, *profiles)
    assert all(seq is not None for group in results[:20] for seq in group)  # type: ignore[attr-defined]
    assert await sqlite_store.count_events(acme) == 20 * 20 + 10
    assert len(await sqlite_store.list_accounts()) == 21


async def test_a_lock_held_past_the_busy_timeout_is_store_unavailable_then_it_recovers(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "inlet.db", busy_timeout_ms=200)
    await store.open()
    try:
        acme = (await store.ensure_account("acme")).id
        other = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable):
            await store.write_events([write(acme, track("late"))])
        other.execute("ROLLBACK")
        other.close()
        assert (await store.write_events([write(acme, track("late"))]))[0] is not None
        assert await store.count_events(acme) == 1
    finally:
        await store.close()


async def test_a_cancelled_job_keeps_the_connection_until_the_writer_thread_is_done(
    patient_store: SqliteStore, tmp_path: Path
) -> None:
    """A gRPC deadline cancels an admin call waiting for another process's lock: the next
    event group must neither share the connection with it nor stall the event loop."""
    acme = (await patient_store.ensure_account("acme")).id
    other = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    waiting = await waits_for_the_lock(patient_store)
    with HeldByAnother(lambda: other.execute("COMMIT")) as lock:
        creating = asyncio.create_task(patient_store.ensure_account("beta"))
        await asyncio.wait_for(waiting.wait(), WATCHDOG_S)  # on the writer thread
        creating.cancel()
        writing = asyncio.create_task(patient_store.write_events([write(acme, track("after"))]))
        await settle()  # the group goes as far as it can before the job is done
        assert not writing.done()
        lock.release()  # the loop never blocked behind the cancelled job
    other.close()
    assert (await writing)[0] is not None
    with pytest.raises(asyncio.CancelledError):
        await creating
    assert await patient_store.count_events(acme) == 1


async def test_a_group_rolled_back_after_its_delete_leaves_no_stale_link_cache(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    """A group that fails after its delete is undone whole. The events after the delete
    read the group's own, uncommitted deletion id, which another process's next
    deletion may then take: links that process erases must still be written again."""
    acme = (await sqlite_store.ensure_account("acme")).id
    linking = {"type": "identify", "userId": "u", "anonymousId": "a", "traits": {}}
    await sqlite_store.write_events([write(acme, {**linking, "messageId": "link-1"})])

    def fail_after_the_delete(writes: Sequence[EventWrite]) -> None:
        # Once "after" is inserted, and has read the delete's uncommitted deletion id.
        if writes[-1].event.message_id == "after":
            raise sqlite3.OperationalError("disk I/O error")

    sqlite_store.on_insert = fail_after_the_delete
    delete = {"type": "delete", "messageId": "del-x", "userId": "someone-else"}
    with pytest.raises(StoreUnavailable):
        await sqlite_store.write_events([write(acme, delete), write(acme, track("after"))])
    sqlite_store.on_insert = None
    assert await sqlite_store.count_events(acme) == 1  # the whole group was undone

    # Another process erases user u: its deletion takes the id the rollback freed.
    other = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute(
        "INSERT INTO deletions (account_id, user_id, message_id, requested_at_us, erased_ids,"
        " erased_events) VALUES (?, 'u', 'del-u', 0, 2, 1)",
        (acme,),
    )
    other.execute("DELETE FROM identity_links WHERE account_id = ?", (acme,))
    other.execute("COMMIT")
    other.close()

    await sqlite_store.write_events([write(acme, {**linking, "messageId": "link-2"})])
    assert set(await sqlite_store.linked_ids(acme, "u")) == {"u", "a"}


async def test_a_sibling_worker_waits_for_the_writer_lock_instead_of_timing_out(
    tmp_path: Path,
) -> None:
    # `inlet serve --workers`: a sibling holds the file lock (and SQLite's) for longer
    # than the busy timeout. This worker waits for it on its writer thread, the loop
    # free meanwhile, and commits once it is released: no 503 for a sibling's commit.
    store = SqliteStore(tmp_path / "inlet.db", busy_timeout_ms=200, sibling_writers=True)
    await store.open()
    sibling = WriterLock(tmp_path / "inlet.db")
    try:
        acme = (await store.ensure_account("acme")).id
        sibling.acquire()
        other = sqlite3.connect(
            tmp_path / "inlet.db", isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO switches VALUES ('s', 'v', 0)")

        def sibling_commits() -> None:
            other.execute("COMMIT")
            sibling.release()

        with HeldByAnother(sibling_commits) as locks:
            writing = asyncio.create_task(store.write_events([write(acme, track("after"))]))
            await asyncio.sleep(0.5)  # the sibling's long transaction: past the busy timeout
            assert not writing.done()
            locks.release()  # by the loop, free while the write waited
        other.close()
        assert (await writing)[0] is not None
        assert await store.count_events(acme) == 1
    finally:
        sibling.close()
        await store.close()


async def test_a_siblings_deletion_makes_a_worker_store_the_returning_users_links_again(
    tmp_path: Path,
) -> None:
    """`inlet serve --workers`: two processes share the file, each caching the links it
    knows are stored. A sibling's deletion erases the user's links; this worker must
    store them again when the user comes back, so that the next deletion covers the
    user's device too. Another user's links stay known (not re-inserted)."""
    one = SqliteStore(tmp_path / "inlet.db", sibling_writers=True)
    two = SqliteStore(tmp_path / "inlet.db", sibling_writers=True)
    await one.open()
    await two.open()
    try:
        acme = (await one.ensure_account("acme")).id

        def seen(message_id: str, user: str, device: str, minute: int) -> EventWrite:
            return write(acme, at(track(message_id, user, anonymousId=device), minute))

        def delete(message_id: str, minute: int, user: str = "u1") -> EventWrite:
            return write(
                acme, at({"type": "delete", "userId": user, "messageId": message_id}, minute)
            )

        # An earlier deletion, which this worker has seen: from then on it forgets
        # only what each later deletion erased.
        await two.write_events([delete("del-0", 0, "u9")])
        await one.write_events([seen("t-1", "u1", "a1", 0), seen("t-2", "u2", "a2", 0)])
        await two.write_events([delete("del-1", 5)])
        conn = sqlite3.connect(tmp_path / "inlet.db")
        try:
            await one.write_events([seen("t-3", "u1", "a1", 6)])
            await two.write_events([delete("del-2", 7)])
            ids = conn.execute(
                "SELECT id FROM deleted_ids WHERE deletion_id = (SELECT max(id) FROM deletions)"
            ).fetchall()
        finally:
            conn.close()
        assert sorted(ids) == [("a1",), ("u1",)]
    finally:
        await one.close()
        await two.close()
