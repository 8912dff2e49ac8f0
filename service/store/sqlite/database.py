"""The SQLite file and its connections, shared by the store's parts (events.py,
profiles.py, accounts.py): the writer connection, used by one piece of work at a time
(the write lock), with its thread for what may wait (COMMIT, a BEGIN that waits for
another process, whole write transactions); the readers, one connection per reader
thread; WAL and its checkpoints (checkpointer.py). Other processes (the `inlet keys`
command beside a running server) share the file through SQLite's own locking;
`busy_timeout` makes them wait briefly, not fail.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from service.errors import StoreUnavailable
from service.store.base import StoreError
from service.store.sqlite import schema
from service.store.sqlite.checkpointer import CheckpointSettings, WalCheckpointer

T = TypeVar("T")


class WriterLock:
    """A file lock (`flock`) beside the database that the sibling processes of `inlet
    serve --workers` take before each write transaction and release after its COMMIT.

    SQLite's own write lock is no queue: a process that finds it taken sleeps in its
    busy handler (1, 2, 5, 10... ms) and looks again, so a commit of a few milliseconds
    costs the next writer up to twice as long in sleep (bench/README.md). A blocked
    `flock` returns as soon as the holder lets go. The kernel drops it with its holder,
    even after a `kill -9`. Processes that do not take it (`inlet keys`) still meet
    SQLite's lock and its busy timeout, as before."""

    def __init__(self, database: Path) -> None:
        database.parent.mkdir(parents=True, exist_ok=True)
        self.path = database.with_name(database.name + "-writer-lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self) -> None:
        """Wait for it (on a writer thread: it blocks until the holder releases it)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class SqliteOptions(TypedDict, total=False):
    """SqliteDatabase's keyword arguments, for the parts that add state of their own
    and pass them on (mypy checks each against `SqliteDatabase.__init__`)."""

    durable: bool
    busy_timeout_ms: int
    checkpoints: CheckpointSettings | None
    sibling_writers: bool


class SqliteDatabase:
    """One SQLite file: the writer connection and its thread, the readers, write
    transactions, WAL and its checkpoints. The state the parts share is set here."""

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        busy_timeout_ms: int = 2000,
        checkpoints: CheckpointSettings | None = None,
        sibling_writers: bool = False,
    ) -> None:
        """`sibling_writers`: other processes of `inlet serve --workers` write this file
        too; each write transaction then first takes a file lock (`WriterLock`)."""
        self.path = path
        self._durable = durable
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inlet-sqlite")
        self._conn: sqlite3.Connection | None = None
        # Reads (history, profiles, subscriptions) run beside the writer: WAL lets
        # readers see the last commit without waiting for, or delaying, the next one.
        self._read_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inlet-read")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        # The writer connection is used by one piece of work at a time: a job on the
        # writer thread, or an event group (which runs partly on the event loop).
        self._write_lock: asyncio.Lock | None = None
        self._writer_lock = WriterLock(path) if sibling_writers else None
        # Commits only append to the write-ahead log; this copies it into the file.
        self.checkpointer = WalCheckpointer(self._checkpoint_connection, checkpoints)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        await self._run(self._open, migrate)

    async def migrate(self) -> tuple[int, int]:
        return await self._run(schema.migrate, self._db())

    async def close(self) -> None:
        # Waits for a running checkpoint (a long one copies ~40 MB): off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self.checkpointer.stop)
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        if self._writer_lock is not None:
            self._writer_lock.close()
        self._executor.shutdown(wait=True)
        self._read_executor.shutdown(wait=True)
        for reader in self._readers:
            reader.close()
        self._readers.clear()

    async def use_writer(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """`func(writer connection)` on the writer thread, alone on the connection and
        outside any transaction: for the connection's own settings and state (PRAGMAs),
        such as tests that read them or inject a fault there."""
        return await self._run(lambda: func(self._db()))

    def _open(self, migrate: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Event groups insert on the event loop and commit on the writer thread
        # (events.py), never both at once: the write lock orders them.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        self._enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {'FULL' if self._durable else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        if migrate:
            schema.migrate(conn)
        # Checkpoints run on their own thread (checkpointer.py); this is the backstop.
        settings = self.checkpointer.settings
        conn.execute(f"PRAGMA wal_autocheckpoint = {settings.backstop_pages}")
        # The writer is the connection that starts the log over, and so cuts it back.
        conn.execute(f"PRAGMA journal_size_limit = {settings.wal_size_limit_bytes}")
        self._conn = conn
        self.checkpointer.start()

    def _checkpoint_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Reading the schema can meet a lock for a moment (another process recovering
        # the log); FULL fsyncs the log before copying it and the file after (as NORMAL
        # does in WAL mode: said outright rather than left to the build's default).
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _commit(self, conn: sqlite3.Connection) -> None:
        """COMMIT, then, when the checkpoint thread asks, the catch-up checkpoint
        (checkpointer.py): the pages committed since its last copy, while no one else
        writes, so that the next transaction can start the log over."""
        conn.execute("COMMIT")
        self.checkpointer.after_commit(conn)

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch a new file to WAL. Two processes opening one new file at once (cores
        starting together, `inlet keys create` beside a starting core) race here, and
        SQLite answers the loser "database is locked" at once, without its busy
        handler; so retry until the busy timeout (WAL, once set, stays set)."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    # -- the writer and the readers ----------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` on the writer thread, alone on the writer connection."""
        async with self._lock():
            return await self._on_writer_thread(func, *args)

    def _lock(self) -> asyncio.Lock:
        if self._write_lock is None:  # made on first use: it belongs to the running loop
            self._write_lock = asyncio.Lock()
        return self._write_lock

    async def _on_writer_thread(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` on the writer thread. A caller cancelled meanwhile still waits
        for it to finish before the cancellation goes on: whoever holds the write lock
        keeps it while the writer thread uses the connection (a job may wait up to the
        busy timeout for another process's lock)."""
        job = asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            while not job.done():
                try:
                    await asyncio.wait([job])
                except asyncio.CancelledError:
                    continue
            raise

    async def _read(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """Run `func(connection)` on a reader thread, in one read transaction."""

        def run() -> T:
            conn = getattr(self._local, "conn", None)
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                    conn.execute("PRAGMA query_only = 1")
                    self._local.conn = conn
                    self._readers.append(conn)
                conn.execute("BEGIN")  # one snapshot for all of func's statements
                try:
                    return func(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable() from exc

        return await asyncio.get_running_loop().run_in_executor(self._read_executor, run)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one write transaction; map transient SQLite failures."""
        conn = self._db()
        if self._writer_lock is not None:
            self._writer_lock.acquire()  # on the writer thread: waiting here blocks no one
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                self._commit(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            # locked/busy, disk full, I/O error: nothing was committed; retry later.
            raise StoreUnavailable() from exc
        finally:
            if self._writer_lock is not None:
                self._writer_lock.release()
        return result

    def _begin_at_once(self, conn: sqlite3.Connection) -> bool:
        """BEGIN IMMEDIATE without waiting; False if another process holds the write lock
        (then the writer thread waits for it, up to the busy timeout)."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            # The extended code (SQLITE_BUSY_RECOVERY, ...) carries the primary one in its low byte.
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
