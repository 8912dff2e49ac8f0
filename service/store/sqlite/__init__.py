"""The embedded SQLite store (the default): WAL, group commit, one writer connection.

One connection writes, its use ordered by an asyncio lock, so SQLite never contends
with itself inside a process. Event groups insert on the event loop (short statements;
sqlite3 drops the GIL around each, and a hop to a thread per statement cost more than
it saved); what may wait or take long runs on the one writer thread, so the loop never
blocks on disk or on another process's lock: COMMIT (the fsync), a BEGIN that must
wait, `delete` events, and the other writes (keys, accounts, migrations). Reads run
on a pool of reader threads, each with its own connection.
Other processes (the `inlet keys` command beside a running server) share the file
through SQLite's own locking; `busy_timeout` makes them wait briefly, not fail.

Durability: `synchronous=FULL` by default, so a committed event survives a power
cut, not only a crash. Group commit (group_commit.py) keeps that affordable.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from service.errors import StoreUnavailable
from service.projections import GROUP, USER, Projection, project
from service.store.base import (
    SUPPRESSED,
    Account,
    CommitSignal,
    EventQuery,
    EventWrite,
    GroupRecord,
    KeyRecord,
    ProfileRecord,
    StoredRecord,
    StoreError,
    WriteResult,
    rotated_expiry,
)
from service.store.group_commit import AsyncGroupCommitter
from service.store.rows import newest_traits
from service.store.sqlite.checkpointer import CheckpointSettings, WalCheckpointer
from service.suppression import covered_ids, event_time_us, is_suppressed
from service.timestamps import now_us
from service.validation import CanonicalEvent

T = TypeVar("T")
log = logging.getLogger(__name__)

_MAX_KNOWN_LINKS: Final = 100_000
#: No deletions.id is ever this: the link cache is checked against the table again.
_UNKNOWN_DELETION: Final = -1

# Versioned schema. Append, never edit: each entry runs once, in order, and
# `PRAGMA user_version` records how far a database has come.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE accounts (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        suspended     INTEGER NOT NULL DEFAULT 0,
        created_at_us INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        key_id        TEXT PRIMARY KEY,
        account_id    INTEGER NOT NULL REFERENCES accounts(id),
        secret_hash   BLOB NOT NULL,
        scopes        TEXT NOT NULL,
        label         TEXT NOT NULL DEFAULT '',
        created_at_us INTEGER NOT NULL,
        expires_at_us INTEGER,
        revoked_at_us INTEGER
    );
    CREATE INDEX api_keys_account ON api_keys(account_id);
    -- AUTOINCREMENT: sequence numbers are never reused, even after deletions,
    -- so they can serve as stable cursors.
    CREATE TABLE events (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id     INTEGER NOT NULL REFERENCES accounts(id),
        message_id     TEXT NOT NULL,
        type           TEXT NOT NULL,
        user_id        TEXT,
        anonymous_id   TEXT,
        name           TEXT,
        group_id       TEXT,
        previous_id    TEXT,
        timestamp_us   INTEGER NOT NULL,
        received_at_us INTEGER NOT NULL,
        key_id         TEXT NOT NULL,
        payload        BLOB NOT NULL,
        settings       BLOB,
        UNIQUE (account_id, message_id)
    );
    """,
    # 2: profiles (projections.py), history and subscription indexes, switches.
    """
    CREATE INDEX events_account_seq ON events(account_id, seq);
    -- Whose event it is: the userId, else the anonymousId, and NULL for delete events
    -- (they belong to no profile, and stay as the record of deletions). One index
    -- finds a profile's events, because an event carrying both ids also links
    -- them (identity_links): its anonymousId is reached through the link. (Two
    -- indexes, userId and anonymousId, cost twice as much on every insert.)
    ALTER TABLE events ADD COLUMN subject TEXT;
    UPDATE events SET subject = coalesce(user_id, anonymous_id) WHERE type != 'delete';
    CREATE INDEX events_subject ON events(account_id, subject);
    -- Each link is stored in both directions, so a profile is one recursive walk.
    -- kind: what `other` is, seen from `id` (projections.py): 'alias', 'anonymous', 'user'.
    CREATE TABLE identity_links (
        account_id INTEGER NOT NULL,
        id         TEXT NOT NULL,
        other      TEXT NOT NULL,
        kind       TEXT NOT NULL,
        PRIMARY KEY (account_id, id, other)
    ) WITHOUT ROWID;
    -- Links of events stored before this version (their traits are not backfilled).
    INSERT OR IGNORE INTO identity_links
        SELECT account_id, user_id, anonymous_id, 'anonymous' FROM events
        WHERE user_id IS NOT NULL AND anonymous_id IS NOT NULL AND user_id != anonymous_id
        UNION ALL
        SELECT account_id, anonymous_id, user_id, 'user' FROM events
        WHERE user_id IS NOT NULL AND anonymous_id IS NOT NULL AND user_id != anonymous_id;
    -- subject_kind 'user' (identify traits by userId/anonymousId) or 'group'.
    CREATE TABLE traits (
        account_id   INTEGER NOT NULL,
        subject_kind TEXT NOT NULL,
        subject_id   TEXT NOT NULL,
        key          TEXT NOT NULL,
        value        BLOB NOT NULL,
        timestamp_us INTEGER NOT NULL,
        message_id   TEXT NOT NULL,
        PRIMARY KEY (account_id, subject_kind, subject_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE memberships (
        account_id   INTEGER NOT NULL,
        member_id    TEXT NOT NULL,
        group_id     TEXT NOT NULL,
        timestamp_us INTEGER NOT NULL,
        PRIMARY KEY (account_id, member_id, group_id)
    ) WITHOUT ROWID;
    -- The record that a deletion happened (not the data): who, when, how much.
    CREATE TABLE deletions (
        id              INTEGER PRIMARY KEY,
        account_id      INTEGER NOT NULL REFERENCES accounts(id),
        user_id         TEXT NOT NULL,
        message_id      TEXT NOT NULL,
        requested_at_us INTEGER NOT NULL,
        erased_ids      INTEGER NOT NULL,
        erased_events   INTEGER NOT NULL
    );
    CREATE TABLE switches (
        name          TEXT PRIMARY KEY,
        value         TEXT NOT NULL,
        changed_at_us INTEGER NOT NULL
    );
    """,
    # 3: deleted users stay deleted (service/suppression.py).
    """
    ALTER TABLE accounts ADD COLUMN suppress_deleted_users INTEGER NOT NULL DEFAULT 0;
    -- The delete's own time (receivedAt, else timestamp): the events it covers are older.
    ALTER TABLE deletions ADD COLUMN deleted_at_us INTEGER NOT NULL DEFAULT 0;
    UPDATE deletions SET deleted_at_us = requested_at_us;
    -- Each id linked to the user when the delete was stored, with the delete's time.
    CREATE TABLE deleted_ids (
        account_id    INTEGER NOT NULL,
        id            TEXT NOT NULL,
        deletion_id   INTEGER NOT NULL REFERENCES deletions(id),
        deleted_at_us INTEGER NOT NULL,
        PRIMARY KEY (account_id, id, deletion_id)
    ) WITHOUT ROWID;
    -- Deletions stored before: their links are gone, so only the user's own id is known,
    -- and the time Inlet stored them stands in (a little later: it covers a little more).
    INSERT INTO deleted_ids SELECT account_id, user_id, id, requested_at_us FROM deletions;
    -- A delete event is part of its user's history (ListEvents' user filter) and of no
    -- profile: erasures and profiles leave delete events out.
    UPDATE events SET subject = user_id WHERE type = 'delete';
    """,
)

_INSERT_EVENT: Final = """
    INSERT INTO events (account_id, message_id, type, user_id, anonymous_id, name, group_id,
                        previous_id, timestamp_us, received_at_us, key_id, payload, settings,
                        subject)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (account_id, message_id) DO NOTHING
"""
# Newest timestamp wins; on a tie the later arrival does (a redelivery with new data).
_UPSERT_TRAIT: Final = """
    INSERT INTO traits (account_id, subject_kind, subject_id, key, value, timestamp_us, message_id)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (account_id, subject_kind, subject_id, key) DO UPDATE
    SET value = excluded.value, timestamp_us = excluded.timestamp_us,
        message_id = excluded.message_id
    WHERE excluded.timestamp_us >= traits.timestamp_us
"""
_UPSERT_MEMBERSHIP: Final = """
    INSERT INTO memberships (account_id, member_id, group_id, timestamp_us) VALUES (?, ?, ?, ?)
    ON CONFLICT (account_id, member_id, group_id) DO UPDATE
    SET timestamp_us = max(timestamp_us, excluded.timestamp_us)
"""
_LINK: Final = (
    "INSERT OR IGNORE INTO identity_links (account_id, id, other, kind) VALUES (?, ?, ?, ?)"
)
# Every id reachable from ?2 through links, following a device's link to its users only
# from the start (projections.py); UNION (not UNION ALL) stops at cycles.
_LINKED_IDS: Final = """
    WITH RECURSIVE linked(id, start) AS (
        SELECT ?2, 1
        UNION
        SELECT l.other, 0 FROM identity_links l JOIN linked ON l.account_id = ?1 AND l.id = linked.id
        WHERE l.kind != 'user' OR linked.start = 1
    )
    SELECT DISTINCT id FROM linked ORDER BY id
"""
_LATEST_SEQ: Final = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)"
# The oldest rows by sequence (the table's own order: no index on the receive time is
# needed, and a run with nothing to delete reads `limit` rows, not the table).
_PRUNE_EVENTS: Final = """
    DELETE FROM events
    WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?) AND received_at_us < ?
"""
_IN_IDS: Final = "IN (SELECT value FROM json_each(?))"
# Events of a profile (`subject` in a JSON array of its linked ids).
_OF_IDS: Final = f"subject {_IN_IDS}"
# A user's delete events stay: each is the record that a deletion happened.
_ERASE_EVENTS: Final = f"DELETE FROM events WHERE account_id = ? AND {_OF_IDS} AND type != 'delete'"
_PROFILE_COUNTS: Final = (
    "SELECT type, count(*), min(timestamp_us), max(timestamp_us) FROM events "
    f"WHERE account_id = ? AND {_OF_IDS} AND type != 'delete' GROUP BY type"
)
# When each of these ids (a JSON array) of an account was last deleted.
_DELETED_AT: Final = (
    "SELECT id, max(deleted_at_us) FROM deleted_ids "
    f"WHERE account_id = ? AND id {_IN_IDS} GROUP BY id"
)
_IS_STORED: Final = "SELECT 1 FROM events WHERE account_id = ? AND message_id = ?"
_EVENT_COLUMNS: Final = """
    seq, message_id, type, user_id, anonymous_id, name, group_id, previous_id, timestamp_us,
    received_at_us, key_id, payload, settings
"""
_KEY_COLUMNS: Final = """
    k.key_id, k.account_id, a.name, a.suspended, k.scopes, k.label, k.secret_hash,
    k.created_at_us, k.expires_at_us, k.revoked_at_us, a.suppress_deleted_users
"""
_ACCOUNT_COLUMNS: Final = "id, name, suspended, created_at_us, suppress_deleted_users"
_SELECT_ACCOUNT: Final = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = ?"


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


def _key(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(
        key_id=row[0],
        account_id=row[1],
        account_name=row[2],
        account_suspended=bool(row[3]),
        scopes=tuple(row[4].split(",")),
        label=row[5],
        secret_hash=row[6],
        created_at_us=row[7],
        expires_at_us=row[8],
        revoked_at_us=row[9],
        account_suppresses_deleted_users=bool(row[10]),
    )


def _stored(row: tuple[Any, ...]) -> StoredRecord:
    return StoredRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        bytes(row[11]),
        None if row[12] is None else bytes(row[12]),
    )


def _linked(conn: sqlite3.Connection, account_id: int, id: str) -> tuple[str, ...]:
    return tuple(row[0] for row in conn.execute(_LINKED_IDS, (account_id, id)))


def _account(row: tuple[Any, ...]) -> Account:
    return Account(
        id=row[0],
        name=row[1],
        suspended=bool(row[2]),
        created_at_us=row[3],
        suppress_deleted_users=bool(row[4]),
    )


class SqliteStore:
    """Store on one SQLite file. Create it, `await open()`, use it, `await close()`."""

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
        # (account, id, other) links known to be stored: most events of a known user
        # carry the same two ids again, and skipping their insert keeps ingest cheap.
        # Touched only by whoever holds the write lock.
        self._known_links: OrderedDict[tuple[int, str, str], None] = OrderedDict()
        self._newest_deletion: int | None = None
        self.commits = CommitSignal()
        self._events = AsyncGroupCommitter[EventWrite, WriteResult](
            self._commit_events,
            transient=lambda exc: isinstance(exc, StoreUnavailable),
        )
        # The writer connection is used by one piece of work at a time: a job on the
        # writer thread, or an event group (which runs partly on the event loop).
        self._write_lock: asyncio.Lock | None = None
        self._writer_lock = WriterLock(path) if sibling_writers else None
        # Commits only append to the write-ahead log; this copies it into the file.
        self.checkpointer = WalCheckpointer(self._checkpoint_connection, checkpoints)

    # -- lifecycle ---------------------------------------------------------------------

    #: Other processes writing to the file (a second core) cannot wake this one's
    #: streams: a caught-up stream re-reads this often.
    feed_poll_s = 1.0

    async def open(self, *, migrate: bool = True) -> None:
        await self._run(self._open, migrate)

    async def migrate(self) -> tuple[int, int]:
        return await self._run(self._migrate, self._db())

    async def close(self) -> None:
        await self._events.wait_idle()
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

    def _open(self, migrate: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Event groups insert on the event loop and commit on the writer thread
        # (_commit_events), never both at once: the write lock orders them.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        self._enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {'FULL' if self._durable else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        if migrate:
            self._migrate(conn)
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

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> tuple[int, int]:
        # BEGIN IMMEDIATE takes the write lock first, so two processes starting on
        # one new file cannot both apply the same migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = before = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the database is at schema version {version}, newer than this "
                    f"Inlet knows ({len(MIGRATIONS)}): upgrade Inlet"
                )
            for version, script in enumerate(MIGRATIONS[before:], start=before + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return before, version

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

    # -- events ------------------------------------------------------------------------

    async def write_events(self, writes: Sequence[EventWrite]) -> list[WriteResult]:
        results = await self._events.submit(writes)
        if any(isinstance(seq, int) for seq in results):
            self.commits.publish()
        return results

    async def _commit_events(self, writes: list[EventWrite]) -> list[WriteResult]:
        """One group's transaction.

        The inserts run here, on the event loop; only what may wait runs on the writer
        thread: COMMIT (the fsync), BEGIN when another process holds the write lock, and
        each `delete` event (erasing a user may take long, and must not stall the loop;
        the group's other events still insert here, in order around it). Python's
        sqlite3 gives up the GIL around every statement, so inserting on the writer
        thread made it queue for the GIL several times per event behind the HTTP side,
        and each hand-off cost both threads CPU (bench/: +20-25 % events/s, p99 -30 %).
        """
        # Shielded: a cancelled caller must not release the connection while the writer
        # thread is still committing on it.
        return await asyncio.shield(self._insert_and_commit(writes))

    async def _insert_and_commit(self, writes: list[EventWrite]) -> list[WriteResult]:
        async with self._lock():
            conn = self._db()
            new_links: list[tuple[int, str, str]] = []
            try:
                if self._writer_lock is None:
                    results = await self._group_on_loop(conn, writes, new_links)
                else:
                    results = await self._on_writer_thread(
                        self._group_among_siblings, self._writer_lock, conn, writes, new_links
                    )
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable() from exc  # as in _transaction
        for link in new_links:  # only once committed: a rolled-back link is not stored
            self._remember_link(link)
        return results

    async def _group_on_loop(
        self,
        conn: sqlite3.Connection,
        writes: list[EventWrite],
        new_links: list[tuple[int, str, str]],
    ) -> list[WriteResult]:
        try:
            if not self._begin_at_once(conn):
                await self._on_writer_thread(conn.execute, "BEGIN IMMEDIATE")
            results: list[WriteResult] = []
            start = 0
            for index, write in enumerate(writes):
                if write.event.type == "delete":
                    results += self._insert_events(conn, writes[start:index], new_links)
                    results += await self._on_writer_thread(
                        self._insert_events, conn, [write], new_links
                    )
                    start = index + 1
            results += self._insert_events(conn, writes[start:], new_links)
            await self._on_writer_thread(self._commit, conn)
        except BaseException:  # cancellation included: never leave it open
            self._roll_back(conn)
            raise
        return results

    def _group_among_siblings(
        self,
        lock: WriterLock,
        conn: sqlite3.Connection,
        writes: list[EventWrite],
        new_links: list[tuple[int, str, str]],
    ) -> list[WriteResult]:
        """A group's whole transaction on the writer thread, inside the siblings' file
        lock. The siblings wait for that lock: held only while this thread works, it
        never waits for a turn of this process's busy event loop (inserting on the loop,
        a sibling's commits queued behind this loop's HTTP work: bench/README.md)."""
        lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = self._insert_events(conn, writes, new_links)
                self._commit(conn)
            except BaseException:
                self._roll_back(conn)
                raise
        finally:
            lock.release()
        return results

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        # Events after a delete read the group's own deletion id, now undone and free
        # for another process's next deletion. Reading it emptied the link cache
        # already; still, never keep an uncommitted id.
        self._newest_deletion = _UNKNOWN_DELETION

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

    def _insert_events(
        self,
        conn: sqlite3.Connection,
        writes: list[EventWrite],
        new_links: list[tuple[int, str, str]],
    ) -> list[WriteResult]:
        """Insert each event and apply its projection, inside the open transaction; the
        links made are added to `new_links` (to remember once committed)."""
        if not writes:
            return []
        cursor = conn.cursor()
        # Another process sharing the file may have erased links since: the cache
        # is good only while the newest deletion is the one it has seen.
        newest = cursor.execute("SELECT max(id) FROM deletions").fetchone()[0]
        if newest != self._newest_deletion:
            self._known_links.clear()
            self._newest_deletion = newest
        # Read here, in the transaction that stores the events: a deletion committed
        # before it is seen, and none can commit in between (one writer at a time).
        deleted = {} if newest is None else self._deleted_at(cursor, writes)
        results: list[WriteResult] = []
        for write in writes:
            e = write.event
            if deleted and is_suppressed(
                e, deleted.get(write.account_id, {}), write.suppress_deleted_users
            ):
                # Deduplication first, as everywhere: a stored messageId is a duplicate.
                stored = cursor.execute(_IS_STORED, (write.account_id, e.message_id)).fetchone()
                results.append(None if stored else SUPPRESSED)
                continue
            cursor.execute(
                _INSERT_EVENT,
                (
                    write.account_id,
                    e.message_id,
                    e.type,
                    e.user_id,
                    e.anonymous_id,
                    e.name,
                    e.group_id,
                    e.previous_id,
                    e.timestamp_us,
                    e.received_at_us,
                    write.key_id,
                    e.raw,
                    e.settings,
                    e.user_id or e.anonymous_id,
                ),
            )
            if cursor.rowcount != 1:
                results.append(None)  # a duplicate: its projection was applied before
                continue
            seq = cursor.lastrowid
            assert seq is not None
            results.append(seq)
            projection = project(e)
            if not projection.empty:
                self._apply(cursor, write, seq, projection, new_links)
        return results

    @staticmethod
    def _deleted_at(cursor: sqlite3.Cursor, writes: list[EventWrite]) -> dict[int, dict[str, int]]:
        """Per account, when each deleted id among the writes' covered ids was last deleted."""
        ids: dict[int, set[str]] = {}
        for write in writes:
            covered = covered_ids(write.event)
            if covered:
                ids.setdefault(write.account_id, set()).update(covered)
        deleted: dict[int, dict[str, int]] = {}
        for account, some in ids.items():
            rows = cursor.execute(_DELETED_AT, (account, orjson.dumps(sorted(some)).decode()))
            if found := dict(rows.fetchall()):
                deleted[account] = found
        return deleted

    def _apply(
        self,
        cursor: sqlite3.Cursor,
        write: EventWrite,
        seq: int,
        projection: Projection,
        new_links: list[tuple[int, str, str]],
    ) -> None:
        """Apply one stored event's projection, inside its transaction."""
        account, event = write.account_id, write.event
        for a, b, kind in projection.links:
            if (account, a, b) not in self._known_links:
                cursor.execute(_LINK, (account, a, b, kind))
                new_links.append((account, a, b))
        if projection.traits:
            cursor.executemany(
                _UPSERT_TRAIT,
                [
                    (
                        account,
                        t.subject_kind,
                        t.subject_id,
                        t.key,
                        t.value,
                        event.timestamp_us,
                        event.message_id,
                    )
                    for t in projection.traits
                ],
            )
        if projection.membership is not None:
            member, group = projection.membership
            cursor.execute(_UPSERT_MEMBERSHIP, (account, member, group, event.timestamp_us))
        if projection.erase is not None and self._erase(cursor, account, event, seq):
            # Links made earlier in this transaction may be erased now: none may be
            # remembered as stored (the cache is cleared too, in _erase).
            new_links.clear()

    def _erase(
        self, cursor: sqlite3.Cursor, account: int, delete: CanonicalEvent, seq: int
    ) -> bool:
        """Erase the profile and events of the delete's user and every id linked to it,
        and record the deletion of each of those ids; True if any links were erased."""
        user_id = delete.user_id
        ids = [row[0] for row in cursor.execute(_LINKED_IDS, (account, user_id)).fetchall()]
        any_id = orjson.dumps(ids).decode()
        erased = cursor.execute(_ERASE_EVENTS, (account, any_id)).rowcount
        cursor.execute(
            f"DELETE FROM traits WHERE account_id = ? AND subject_kind = '{USER}' "
            f"AND subject_id {_IN_IDS}",
            (account, any_id),
        )
        cursor.execute(
            f"DELETE FROM memberships WHERE account_id = ? AND member_id {_IN_IDS}",
            (account, any_id),
        )
        unlinked = cursor.execute(
            f"DELETE FROM identity_links WHERE account_id = ? AND id {_IN_IDS}", (account, any_id)
        ).rowcount
        deleted_at = event_time_us(delete)
        cursor.execute(
            "INSERT INTO deletions (account_id, user_id, message_id, requested_at_us, "
            "erased_ids, erased_events, deleted_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account, user_id, delete.message_id, now_us(), len(ids), erased, deleted_at),
        )
        deletion = cursor.lastrowid
        cursor.executemany(
            "INSERT INTO deleted_ids (account_id, id, deletion_id, deleted_at_us) "
            "VALUES (?, ?, ?, ?)",
            [(account, id, deletion, deleted_at) for id in ids],
        )
        if unlinked:
            # Links of the erased ids are gone: forget them all (refills as events come).
            self._known_links.clear()
        log.info("deletion %s in account %d: %d ids, %d events", seq, account, len(ids), erased)
        return unlinked > 0

    def _remember_link(self, link: tuple[int, str, str]) -> None:
        self._known_links[link] = None
        if len(self._known_links) > _MAX_KNOWN_LINKS:
            self._known_links.popitem(last=False)

    async def list_events(self, query: EventQuery) -> list[StoredRecord]:
        def read(conn: sqlite3.Connection) -> list[StoredRecord]:
            where: list[str] = ["account_id = ?"]
            args: list[object] = [query.account_id]
            if query.ids is not None:
                any_id = orjson.dumps(query.ids).decode()
                where.append(_OF_IDS)
                args.append(any_id)
            if query.types:
                where.append(f"type {_IN_IDS}")
                args.append(orjson.dumps(query.types).decode())
            for clause, value in (
                ("name = ?", query.name),
                ("timestamp_us >= ?", query.since_us),
                ("timestamp_us < ?", query.until_us),
                ("seq < ?" if query.newest_first else "seq > ?", query.after),
            ):
                if value is not None:
                    where.append(clause)
                    args.append(value)
            sql = (
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                f"ORDER BY seq {'DESC' if query.newest_first else 'ASC'} LIMIT ?"
            )
            return [_stored(row) for row in conn.execute(sql, [*args, query.limit])]

        return await self._read(read)

    async def latest_sequence(self) -> int:
        # AUTOINCREMENT's record of the highest number given, not max(seq): erasing or
        # pruning events, even all of them, does not move "now" back.
        return await self._read(lambda conn: int(conn.execute(_LATEST_SEQ).fetchone()[0]))

    async def prune_events(self, received_before_us: int, limit: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(_PRUNE_EVENTS, (limit, received_before_us)).rowcount

        # On the writer thread, between ingest groups (the write lock orders them).
        return await self._run(self._transaction, work)

    async def linked_ids(self, account_id: int, id: str) -> tuple[str, ...]:
        return await self._read(lambda conn: _linked(conn, account_id, id))

    async def get_profile(self, account_id: int, id: str) -> ProfileRecord | None:
        def read(conn: sqlite3.Connection) -> ProfileRecord | None:
            ids = _linked(conn, account_id, id)
            any_id = orjson.dumps(ids).decode()
            traits = newest_traits(
                conn.execute(
                    f"SELECT key, value, timestamp_us, message_id FROM traits "
                    f"WHERE account_id = ? AND subject_kind = '{USER}' AND subject_id {_IN_IDS}",
                    (account_id, any_id),
                )
            )
            joined = conn.execute(
                f"SELECT group_id, max(timestamp_us) FROM memberships "
                f"WHERE account_id = ? AND member_id {_IN_IDS} GROUP BY group_id ORDER BY group_id",
                (account_id, any_id),
            ).fetchall()
            groups = tuple(
                GroupRecord(
                    group_id,
                    timestamp_us,
                    newest_traits(
                        conn.execute(
                            "SELECT key, value, timestamp_us, message_id FROM traits "
                            f"WHERE account_id = ? AND subject_kind = '{GROUP}' AND subject_id = ?",
                            (account_id, group_id),
                        )
                    ),
                )
                for group_id, timestamp_us in joined
            )
            counts: dict[str, int] = {}
            first: int | None = None
            last: int | None = None
            for event_type, count, oldest, newest in conn.execute(
                _PROFILE_COUNTS, (account_id, any_id)
            ):
                counts[event_type] = count
                first = oldest if first is None else min(first, oldest)
                last = newest if last is None else max(last, newest)
            if not (traits or groups or counts):
                return None
            return ProfileRecord(ids, traits, groups, first, last, counts)

        return await self._read(read)

    async def count_events(self, account_id: int) -> int:
        def read() -> int:
            sql = "SELECT count(*) FROM events WHERE account_id = ?"
            return int(self._db().execute(sql, (account_id,)).fetchone()[0])

        return await self._run(read)

    async def get_event_payload(self, account_id: int, message_id: str) -> bytes | None:
        def read() -> bytes | None:
            row = (
                self._db()
                .execute(
                    "SELECT payload FROM events WHERE account_id = ? AND message_id = ?",
                    (account_id, message_id),
                )
                .fetchone()
            )
            return None if row is None else bytes(row[0])

        return await self._run(read)

    # -- accounts and keys -------------------------------------------------------------

    async def get_key(self, key_id: str) -> KeyRecord | None:
        def read() -> KeyRecord | None:
            try:
                return self._select_key(self._db(), key_id)
            except sqlite3.OperationalError as exc:  # on the ingest path: 503, retry later
                raise StoreUnavailable() from exc

        return await self._run(read)

    async def ensure_account(self, name: str) -> Account:
        def work(conn: sqlite3.Connection) -> Account:
            conn.execute(
                "INSERT INTO accounts (name, created_at_us) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, now_us()),
            )
            row = conn.execute(_SELECT_ACCOUNT, (name,)).fetchone()
            return _account(row)

        return await self._run(self._transaction, work)

    async def create_account(
        self, name: str, suppress_deleted_users: bool = False
    ) -> Account | None:
        def work(conn: sqlite3.Connection) -> Account | None:
            inserted = conn.execute(
                "INSERT INTO accounts (name, created_at_us, suppress_deleted_users) "
                "VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, now_us(), suppress_deleted_users),
            ).rowcount
            if not inserted:
                return None
            return _account(conn.execute(_SELECT_ACCOUNT, (name,)).fetchone())

        return await self._run(self._transaction, work)

    async def get_account(self, name: str) -> Account | None:
        def read() -> Account | None:
            row = self._db().execute(_SELECT_ACCOUNT, (name,)).fetchone()
            return None if row is None else _account(row)

        return await self._run(read)

    async def list_accounts(self) -> list[Account]:
        sql = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name"
        return await self._read(lambda conn: [_account(r) for r in conn.execute(sql)])

    async def get_switch(self, name: str) -> tuple[str, int] | None:
        def read(conn: sqlite3.Connection) -> tuple[str, int] | None:
            sql = "SELECT value, changed_at_us FROM switches WHERE name = ?"
            row = conn.execute(sql, (name,)).fetchone()
            return None if row is None else (row[0], row[1])

        return await self._read(read)

    async def set_switch(self, name: str, value: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            now = now_us()
            conn.execute(
                "INSERT INTO switches (name, value, changed_at_us) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "changed_at_us = excluded.changed_at_us",
                (name, value, now),
            )
            return now

        return await self._run(self._transaction, work)

    async def set_account_suspended(self, name: str, suspended: bool) -> Account:
        return await self._set_account(name, "suspended", suspended)

    async def set_account_suppress_deleted_users(self, name: str, on: bool) -> Account:
        return await self._set_account(name, "suppress_deleted_users", on)

    async def _set_account(self, name: str, column: str, value: bool) -> Account:
        def work(conn: sqlite3.Connection) -> Account:
            conn.execute(f"UPDATE accounts SET {column} = ? WHERE name = ?", (value, name))
            row = conn.execute(_SELECT_ACCOUNT, (name,)).fetchone()
            if row is None:
                raise StoreError(f"no account named {name!r}")
            return _account(row)

        return await self._run(self._transaction, work)

    async def create_key(
        self,
        account_id: int,
        key_id: str,
        secret_hash: bytes,
        scopes: Sequence[str],
        label: str = "",
        expires_at_us: int | None = None,
    ) -> KeyRecord:
        def work(conn: sqlite3.Connection) -> KeyRecord:
            return self._insert_key(
                conn, account_id, key_id, secret_hash, scopes, label, expires_at_us
            )

        return await self._run(self._transaction, work)

    async def rotate_key(
        self,
        key_id: str,
        account_id: int,
        new_key_id: str,
        new_secret_hash: bytes,
        old_valid_until_us: int,
    ) -> KeyRecord | None:
        def work(conn: sqlite3.Connection) -> KeyRecord | None:
            old = self._select_key(conn, key_id)
            until = rotated_expiry(old, account_id, old_valid_until_us, now_us())
            if old is None or until is None:
                return None
            conn.execute("UPDATE api_keys SET expires_at_us = ? WHERE key_id = ?", (until, key_id))
            return self._insert_key(
                conn,
                account_id,
                new_key_id,
                new_secret_hash,
                old.scopes,
                old.label,
                old.expires_at_us,
            )

        return await self._run(self._transaction, work)

    @classmethod
    def _insert_key(
        cls,
        conn: sqlite3.Connection,
        account_id: int,
        key_id: str,
        secret_hash: bytes,
        scopes: Sequence[str],
        label: str,
        expires_at_us: int | None,
    ) -> KeyRecord:
        conn.execute(
            "INSERT INTO api_keys (key_id, account_id, secret_hash, scopes, label, "
            "created_at_us, expires_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key_id, account_id, secret_hash, ",".join(scopes), label, now_us(), expires_at_us),
        )
        record = cls._select_key(conn, key_id)
        assert record is not None  # inserted just above, in this transaction
        return record

    @staticmethod
    def _select_key(conn: sqlite3.Connection, key_id: str) -> KeyRecord | None:
        row = conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id "
            "WHERE k.key_id = ?",
            (key_id,),
        ).fetchone()
        return None if row is None else _key(row)

    async def list_keys(
        self, account_id: int | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        def read() -> list[KeyRecord]:
            sql = f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id"
            where, args = [], []
            if account_id is not None:
                where.append("k.account_id = ?")
                args.append(account_id)
            if not include_revoked:
                where.append("k.revoked_at_us IS NULL")
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY a.name, k.created_at_us"
            return [_key(row) for row in self._db().execute(sql, args)]

        return await self._run(read)

    async def revoke_key(self, key_id: str, account_id: int | None = None) -> KeyRecord | None:
        def work(conn: sqlite3.Connection) -> KeyRecord | None:
            sql = "UPDATE api_keys SET revoked_at_us = coalesce(revoked_at_us, ?) WHERE key_id = ?"
            args: list[object] = [now_us(), key_id]
            if account_id is not None:
                sql += " AND account_id = ?"
                args.append(account_id)
            if conn.execute(sql, args).rowcount == 0:
                return None
            return self._select_key(conn, key_id)

        return await self._run(self._transaction, work)
