"""SQLite's write-ahead log is checkpointed by a thread of its own (checkpointer.py).

What a partner relies on: committed events reach the database file itself without a
commit paying for the copy, a failing checkpoint is retried and loses nothing, and
the store closes promptly.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.store.sqlite import SqliteStore
from service.store.sqlite.checkpointer import (
    Checkpoint,
    CheckpointSettings,
    WalCheckpointer,
    checkpoint,
)
from tests.store.test_conformance import track, write
from tests.waiting import eventually, eventually_sync

DEADLINE_S = 10.0


def pragma(name: str) -> Callable[[sqlite3.Connection], object]:
    """Reads a setting of the store's writer connection (with `use_writer`)."""
    return lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0]


def _events_in_file_alone(database: Path, copy: Path) -> int:
    """Events readable from the database file without its log (as after losing the
    `-wal` file): only what a checkpoint copied there."""
    shutil.copyfile(database, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.DatabaseError:  # not even the schema is there yet, or a torn copy
        return 0
    finally:
        conn.close()


async def test_committed_events_reach_the_database_file_without_a_commit_copying_them(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "inlet.db")
    await store.open()
    try:
        # SQLite's own checkpoint would wait for 1,000 pages of log; these are a few.
        backstop = store.checkpointer.settings.backstop_pages
        assert await store.use_writer(pragma("wal_autocheckpoint")) == backstop
        acme = (await store.ensure_account("acme")).id
        stored = await store.write_events([write(acme, track(f"c-{i}")) for i in range(50)])
        assert all(seq is not None for seq in stored)

        def copied() -> bool:
            return _events_in_file_alone(tmp_path / "inlet.db", tmp_path / "copy.db") == 50

        await eventually(copied, what="the events in the database file", timeout=DEADLINE_S)
        assert await store.count_events(acme) == 50
    finally:
        await store.close()


def test_a_failing_checkpoint_is_logged_and_tried_again_after_the_next_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "inlet.db"
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # only the checkpointer copies
    conn.execute("CREATE TABLE events (x)")
    conn.execute("INSERT INTO events VALUES (1)")
    failures = [sqlite3.OperationalError("disk I/O error"), OSError("no such directory")]

    def connect() -> sqlite3.Connection:
        if failures:
            raise failures.pop(0)
        return sqlite3.connect(database, isolation_level=None, check_same_thread=False)

    checkpointer = WalCheckpointer(connect, CheckpointSettings(interval_s=0.0))
    caplog.set_level(logging.WARNING, logger="service.store.sqlite.checkpointer")
    checkpointer.start()
    try:
        for attempt in (1, 2):  # a SQLite error, then any other: the thread lives on
            checkpointer.after_commit(conn)

            def failed(n: int = attempt) -> bool:
                return checkpointer.failures >= n

            eventually_sync(failed, what=f"failure {attempt}", timeout=DEADLINE_S)
            assert checkpointer.alive
        assert "disk I/O error" in caplog.records[0].getMessage()
        # Nothing was copied, and nothing is lost: the row is in the log.
        assert checkpointer.runs == 0
        assert _events_in_file_alone(database, tmp_path / "copy.db") == 0
        assert conn.execute("SELECT x FROM events").fetchall() == [(1,)]

        checkpointer.after_commit(conn)  # the next commit: tried again, and it works
        eventually_sync(lambda: checkpointer.runs > 0, what="a checkpoint", timeout=DEADLINE_S)
        assert checkpointer.last is not None and not checkpointer.last.busy
        assert checkpointer.last.checkpointed_pages == checkpointer.last.log_pages > 0
        assert _events_in_file_alone(database, tmp_path / "copy.db") == 1
    finally:
        checkpointer.stop()
        conn.close()


async def test_the_log_restarts_under_back_to_back_commits(tmp_path: Path) -> None:
    """Under load a PASSIVE checkpoint always ends with newer commits in the log, so
    SQLite would never write it from its start again: the writer's catch-up after a
    commit lets it start over, and the -wal file stays short (1-3 MB here; 15-40 MB
    without catch-ups, the backstop's 10,000 pages being ~40 MB)."""
    settings = CheckpointSettings(interval_s=0.02, catch_up_pages=100)
    store = SqliteStore(tmp_path / "inlet.db", checkpoints=settings)
    await store.open()
    wal = tmp_path / "inlet.db-wal"
    longest = 0
    try:
        acme = (await store.ensure_account("acme")).id
        counter = iter(range(10**9))

        async def writer() -> None:
            nonlocal longest
            for _ in range(180):
                group = [write(acme, track(f"w-{next(counter)}", user=f"u{i}")) for i in range(25)]
                await store.write_events(group)
                longest = max(longest, wal.stat().st_size)

        await asyncio.gather(*(writer() for _ in range(8)))  # groups back to back
        assert await store.count_events(acme) == 8 * 180 * 25
        assert store.checkpointer.catch_ups >= 1
        assert longest < 4 * 1024 * 1024, f"the log grew to {longest} bytes"
    finally:
        await store.close()


def test_stop_does_not_wait_out_the_pause_between_checkpoints(tmp_path: Path) -> None:
    database = tmp_path / "inlet.db"
    writer = sqlite3.connect(database)
    writer.execute("PRAGMA journal_mode = WAL")
    checkpointer = WalCheckpointer(
        lambda: sqlite3.connect(database, check_same_thread=False),
        CheckpointSettings(interval_s=3600),
    )
    checkpointer.start()
    checkpointer.after_commit(writer)
    # Then an hour's pause.
    eventually_sync(lambda: checkpointer.runs > 0, what="a checkpoint", timeout=DEADLINE_S)
    started = time.monotonic()
    checkpointer.stop()
    writer.close()
    assert time.monotonic() - started < DEADLINE_S


def test_the_checkpoint_answer_is_read_as_sqlite_gives_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "rollback-journal.db")  # not in WAL mode
    assert checkpoint(conn) == Checkpoint(busy=False, log_pages=-1, checkpointed_pages=-1)
    conn.close()


async def test_a_failing_catch_up_never_fails_the_committed_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "inlet.db")
    writer: sqlite3.Connection | None = None  # the store's, once open

    def broken(conn: sqlite3.Connection) -> Checkpoint:
        if conn is writer:  # the writer's catch-up; the thread's own still work
            raise sqlite3.OperationalError("disk I/O error")
        return checkpoint(conn)

    monkeypatch.setattr("service.store.sqlite.checkpointer.checkpoint", broken)
    caplog.set_level(logging.WARNING, logger="service.store.sqlite.checkpointer")
    await store.open()
    try:
        writer = await store.use_writer(lambda conn: conn)
        acme = (await store.ensure_account("acme")).id
        for index in range(3):
            store.checkpointer.catch_up_due = True  # as the thread asks after a long log
            stored = await store.write_events([write(acme, track(f"f-{index}"))])
            assert stored[0] is not None  # committed, and answered as committed
            assert not store.checkpointer.catch_up_due  # left to the thread to ask again
        assert store.checkpointer.failures == 3
        assert await store.count_events(acme) == 3
        warnings = [r for r in caplog.records if "catch-up" in r.getMessage()]
        assert len(warnings) == 1  # once a minute, not once a commit
        assert "disk I/O error" in warnings[0].getMessage()
    finally:
        await store.close()


async def test_the_log_file_shrinks_back_once_a_pinning_read_ends(tmp_path: Path) -> None:
    """A read that holds its snapshot (a long export) stops the log from starting over,
    so the -wal file grows with every commit; once the read ends and the log starts
    over, the file is cut back to `wal_size_limit_bytes` instead of keeping its
    high-water size on disk until the store closes."""
    limit = 256 * 1024
    settings = CheckpointSettings(interval_s=0.01, catch_up_pages=10, wal_size_limit_bytes=limit)
    store = SqliteStore(tmp_path / "inlet.db", checkpoints=settings)
    await store.open()
    wal = tmp_path / "inlet.db-wal"
    reader = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None)
    try:
        assert await store.use_writer(pragma("journal_size_limit")) == limit
        acme = (await store.ensure_account("acme")).id
        counter = iter(range(10**9))

        async def commit_some(groups: int) -> None:
            for _ in range(groups):
                await store.write_events(
                    [write(acme, track(f"p-{next(counter)}", user=f"u{i}")) for i in range(25)]
                )

        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()  # the snapshot is held
        await commit_some(120)
        grown = wal.stat().st_size
        assert grown > 4 * limit, f"the pinned log grew to {grown} bytes only"

        reader.execute("COMMIT")  # the read ends; commits go on

        async def shrunk() -> bool:
            if wal.stat().st_size <= limit:
                return True
            await commit_some(1)
            return False

        await eventually(
            shrunk,
            what=lambda: f"the log file to shrink (it stayed at {wal.stat().st_size})",
            timeout=DEADLINE_S,
        )
        assert await store.count_events(acme) == next(counter)
    finally:
        reader.close()
        await store.close()
