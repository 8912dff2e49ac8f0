"""The embedded SQLite store (the default): WAL, group commit, one writer thread.

All database work runs on one dedicated thread with one connection, so the event
loop never blocks on disk and SQLite never contends with itself inside a process.
Other processes (the `inlet keys` command beside a running server) share the file
through SQLite's own locking; `busy_timeout` makes them wait briefly, not fail.

Durability: `synchronous=FULL` by default, so a committed event survives a power
cut, not only a crash. Group commit (group_commit.py) keeps that affordable.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from service.errors import StoreUnavailable
from service.store.base import Account, EventWrite, KeyRecord, StoreError
from service.store.group_commit import GroupCommitter

T = TypeVar("T")

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
)

_INSERT_EVENT: Final = """
    INSERT INTO events (account_id, message_id, type, user_id, anonymous_id, name, group_id,
                        previous_id, timestamp_us, received_at_us, key_id, payload, settings)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (account_id, message_id) DO NOTHING
"""
_KEY_COLUMNS: Final = """
    k.key_id, k.account_id, a.name, a.suspended, k.scopes, k.label, k.secret_hash,
    k.created_at_us, k.expires_at_us, k.revoked_at_us
"""


def _now_us() -> int:
    return time.time_ns() // 1000


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
    )


def _account(row: tuple[Any, ...]) -> Account:
    return Account(id=row[0], name=row[1], suspended=bool(row[2]), created_at_us=row[3])


class SqliteStore:
    """Store on one SQLite file. Create it, `await open()`, use it, `await close()`."""

    def __init__(self, path: Path, *, durable: bool = True, busy_timeout_ms: int = 2000) -> None:
        self.path = path
        self._durable = durable
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inlet-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._events = GroupCommitter[EventWrite, int | None](
            self._write_events,
            self._executor,
            transient=lambda exc: isinstance(exc, StoreUnavailable),
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._events.wait_idle()
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if self._durable else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        self._migrate(conn)
        self._conn = conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock first, so two processes starting on
        # one new file cannot both apply the same migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one write transaction; map transient SQLite failures."""
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            # locked/busy, disk full, I/O error: nothing was committed; retry later.
            raise StoreUnavailable() from exc
        return result

    # -- events ------------------------------------------------------------------------

    async def write_events(self, writes: Sequence[EventWrite]) -> list[int | None]:
        return await self._events.submit(writes)

    def _write_events(self, writes: list[EventWrite]) -> list[int | None]:
        def work(conn: sqlite3.Connection) -> list[int | None]:
            cursor = conn.cursor()
            results: list[int | None] = []
            for write in writes:
                e = write.event
                cursor.execute(
                    _INSERT_EVENT,
                    (
                        write.account_id, e.message_id, e.type, e.user_id, e.anonymous_id,
                        e.name, e.group_id, e.previous_id, e.timestamp_us, e.received_at_us,
                        write.key_id, e.raw, e.settings,
                    ),
                )  # fmt: skip
                results.append(cursor.lastrowid if cursor.rowcount == 1 else None)
            return results

        return self._transaction(work)

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
                (name, _now_us()),
            )
            row = conn.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
            return _account(row)

        return await self._run(self._transaction, work)

    async def get_account(self, name: str) -> Account | None:
        def read() -> Account | None:
            row = self._db().execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
            return None if row is None else _account(row)

        return await self._run(read)

    async def set_account_suspended(self, name: str, suspended: bool) -> Account:
        def work(conn: sqlite3.Connection) -> Account:
            conn.execute("UPDATE accounts SET suspended = ? WHERE name = ?", (suspended, name))
            row = conn.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
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
            conn.execute(
                "INSERT INTO api_keys (key_id, account_id, secret_hash, scopes, label, "
                "created_at_us, expires_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    account_id,
                    secret_hash,
                    ",".join(scopes),
                    label,
                    _now_us(),
                    expires_at_us,
                ),
            )
            record = self._select_key(conn, key_id)
            assert record is not None  # inserted just above, in this transaction
            return record

        return await self._run(self._transaction, work)

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
            args: list[object] = [_now_us(), key_id]
            if account_id is not None:
                sql += " AND account_id = ?"
                args.append(account_id)
            if conn.execute(sql, args).rowcount == 0:
                return None
            return self._select_key(conn, key_id)

        return await self._run(self._transaction, work)
