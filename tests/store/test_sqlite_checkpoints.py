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
import threading
import time
from pathlib import Path

import pytest

from service.store.checkpointer import BACKSTOP_PAGES, Checkpoint, WalCheckpointer, checkpoint
from service.store.sqlite import SqliteStore
from tests.store.test_conformance import track, write

DEADLINE_S = 10.0


async def until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _events_in_file_alone(database: Path, copy: Path) -> int:
    """Events readable from the database file without its log (as after losing the
    `-wal` file): only what a checkpoint copied there."""
    shutil.copyfile(database, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # not even the schema is there yet
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
        assert store._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
        acme = (await store.ensure_account("acme")).id
        stored = await store.write_events([write(acme, track(f"c-{i}")) for i in range(50)])
        assert all(seq is not None for seq in stored)

        def copied() -> bool:
            return _events_in_file_alone(tmp_path / "inlet.db", tmp_path / "copy.db") == 50

        await until(copied, "the events in the database file")
        assert await store.count_events(acme) == 50
    finally:
        await store.close()


def test_a_failing_checkpoint_is_logged_and_tried_again_after_the_next_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "inlet.db"
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    connects: list[int] = []
    tried = threading.Event()

    def connect() -> sqlite3.Connection:
        connects.append(1)
        tried.set()
        if len(connects) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return sqlite3.connect(database, isolation_level=None, check_same_thread=False)

    checkpointer = WalCheckpointer(connect, interval_s=0.0)
    caplog.set_level(logging.WARNING, logger="service.store.checkpointer")
    checkpointer.start()
    try:
        checkpointer.committed()
        assert tried.wait(DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        while not caplog.records:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "disk I/O error" in caplog.records[0].getMessage()
        assert checkpointer.runs == 0  # and nothing is lost: the page is still in the log
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]

        checkpointer.committed()  # the next commit: tried again, and it works
        while checkpointer.runs == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert checkpointer.last is not None and not checkpointer.last.busy
        assert checkpointer.last.checkpointed_pages == checkpointer.last.log_pages > 0
    finally:
        checkpointer.stop()
        conn.close()


def test_stop_does_not_wait_out_the_pause_between_checkpoints(tmp_path: Path) -> None:
    database = tmp_path / "inlet.db"
    sqlite3.connect(database).execute("PRAGMA journal_mode = WAL").close()
    checkpointer = WalCheckpointer(
        lambda: sqlite3.connect(database, check_same_thread=False), interval_s=3600
    )
    checkpointer.start()
    checkpointer.committed()
    deadline = time.monotonic() + DEADLINE_S
    while checkpointer.runs == 0:  # now pausing for an hour before the next one
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    checkpointer.stop()
    assert time.monotonic() - started < DEADLINE_S


def test_the_checkpoint_answer_is_read_as_sqlite_gives_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "rollback-journal.db")  # not in WAL mode
    assert checkpoint(conn) == Checkpoint(busy=False, log_pages=-1, checkpointed_pages=-1)
    conn.close()
