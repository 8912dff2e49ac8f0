"""The PostgreSQL store's plumbing: its options, the pool, the LISTEN connection, what
counts as the database's trouble, and the feed horizon (schema.py's inlet_feed_state)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

import asyncpg

from service.errors import StoreUnavailable
from service.store.base import (
    CommitSignal,
    StoreError,
)
from service.store.postgres import schema

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

#: A connection lent by the pool (a name other modules import: defined at run time too).
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

log = logging.getLogger(__name__)


#: The NOTIFY channel of committed events (payload: the highest seq committed).
CHANNEL: Final = "inlet_events"


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """Tunables of one process's use of the database."""

    pool_size: int = 10
    """Most connections this process opens for queries (plus one for LISTEN). The
    server's max_connections must cover pool_size + 1 per core, and the CLI."""

    timeout_s: float = 5.0
    """Longest wait to connect, to get a pooled connection, or for one statement; past it
    the call fails with StoreUnavailable (the bridge's own deadline is shorter)."""

    commits_in_flight: int = 4
    """Ingest transactions this process runs at once (each a group of batches; at most
    pool_size). More than one lets the server flush several commits' log at once."""

    durable: bool = True
    """synchronous_commit on: a commit returns once its WAL is flushed (off: faster, but
    the server's crash may lose acknowledged events, like SQLite's --no-fsync)."""

    feed_poll_s: float = 30.0
    """Subscribe streams are woken by NOTIFY; this slow re-read is only a safety net."""

    listener_check_s: float = 2.0
    """How often the LISTEN connection is checked (a `SELECT 1`) to notice a restart."""

    idle_transaction_timeout_s: float = 60.0
    """The server ends a session of this process that stays idle inside a transaction
    this long (a frozen core): its transaction rolls back and readers move on."""

    horizon_recheck_s: float = 0.05
    """While ingest transactions are in flight, how soon a reader that stopped at the
    feed horizon is woken to read again (their commits wake it sooner, by NOTIFY)."""

    erase_poll_s: float = 5.0
    """How often the eraser looks for deletions no core has erased yet (one that crashed
    before erasing); this core's own deletes are erased once they commit (after
    `erase_gather_s`)."""

    erase_gather_s: float = 0.2
    """How long the eraser lets deletions gather once one has committed, to erase them
    together: one transaction, its dozen statements and their plans, for all the
    deletes of that time instead of for each. Nothing waits on it: readers leave out
    what waits to be erased (0: erase each delete as soon as it commits)."""

    erase_lock_timeout_s: float = 0.05
    """How long the eraser waits for a row an ingest transaction holds before it gives
    up and tries again shortly: it gives way to ingest, and never holds one waiting on
    it (were both waiting on each other, the server would notice only after its
    deadlock_timeout, 1 s, with every commit of the cores meanwhile queued behind)."""

    def __post_init__(self) -> None:
        if self.pool_size < 1 or min(self.timeout_s, self.feed_poll_s, self.listener_check_s) <= 0:
            raise ValueError("pool_size must be >= 1 and the timeouts > 0")
        if (
            self.commits_in_flight < 1
            or min(
                self.horizon_recheck_s,
                self.erase_poll_s,
                self.idle_transaction_timeout_s,
                self.erase_lock_timeout_s,
            )
            <= 0
        ):
            raise ValueError("commits_in_flight must be >= 1 and the intervals > 0")
        if self.erase_gather_s < 0:
            raise ValueError("erase_gather_s must be >= 0")


def is_transient(exc: BaseException) -> bool:
    """The database's trouble (retry later), not a bug or bad data."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "pool is closing"; others are misuse (bugs).
        return "clos" in str(exc)
    if isinstance(exc, asyncpg.InternalClientError):
        # The server ended the session (a restart, pg_terminate_backend, the idle-in-
        # transaction timeout) between two statements: asyncpg may read its error
        # before the connection closes and report a protocol state clash instead
        # (MagicStack/asyncpg#1069). The connection is dropped (_connection).
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        # 08 connection, 40 serialization/deadlock, 53 resources (disk full, too many
        # connections), 57 operator intervention (shutdown, cannot connect now), 58 I/O,
        # 55P03 lock not available.
        return state[:2] in ("08", "40", "53", "57", "58") or state == "55P03"
    return False


async def _rollback_if_open(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """What a connection needs before it goes back to the pool. asyncpg's default reset
    (unlock, close cursors, UNLISTEN, RESET ALL) costs a round trip on every use, and
    none of it applies: pooled connections never change session state (LISTEN has a
    connection of its own; advisory locks are transaction-scoped). Only a transaction
    left open by a cancelled call needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def as_columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays a statement's `unnest(...)` takes."""
    return [list(column) for column in zip(*rows, strict=True)]


def pg_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; SQLite can. Ids and names with one are stored
    with U+FFFD instead (the exact bytes stay in `payload`), and looked up the same way."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def affected(status: str) -> int:
    """Rows affected, from a command status such as `DELETE 3`."""
    return int(status.rsplit(" ", 1)[-1])


class FeedState(NamedTuple):
    """schema.py's inlet_feed_state: the next number the sequence gives, then the
    lowest floor of the ingest transactions in flight (None: none), and whether
    deletions wait to be erased."""

    next_seq: int
    floor: int | None
    erasing: bool

    @property
    def horizon(self) -> int:
        """Every seq below it is committed or will never exist."""
        return self.next_seq if self.floor is None else min(self.next_seq, self.floor)


async def feed_state(conn: Conn) -> FeedState:
    row = await conn.fetchrow("SELECT next_seq, floor_seq, erasing FROM inlet_feed_state()")
    assert row is not None  # a function call returns one row
    return FeedState(int(row[0]), None if row[1] is None else int(row[1]), bool(row[2]))


class PostgresDatabase:
    """The connections of one process to the database; the store's parts build on it."""

    def __init__(self, dsn: str, options: PostgresOptions | None = None) -> None:
        self.dsn = dsn
        self.options = options or PostgresOptions()
        self.feed_poll_s = self.options.feed_poll_s
        self.commits = CommitSignal()
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        #: Set while the LISTEN connection is up; `listens` counts its (re)connections.
        self.listening = asyncio.Event()
        self.listens = 0

    def _settings(self) -> dict[str, str]:
        return {
            "synchronous_commit": "on" if self.options.durable else "off",
            "application_name": "inlet",
            # A core frozen mid-transaction (SIGSTOP, a machine gone without closing its
            # connections) would hold the feed horizon, and every reader, until it came
            # back: the server ends such a session instead, and its lock goes with it.
            "idle_in_transaction_session_timeout": str(
                int(self.options.idle_transaction_timeout_s * 1000)
            ),
        }

    async def open(self, *, migrate: bool = True) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.options.pool_size,
                timeout=self.options.timeout_s,
                command_timeout=self.options.timeout_s,
                server_settings=self._settings(),
                reset=_rollback_if_open,
            )
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, asyncpg.PostgresError):
                raise StoreError(f"cannot open the PostgreSQL database: {exc}") from exc
            raise
        if migrate:
            await self.migrate()
        self._listener = asyncio.create_task(self._listen(), name="inlet-pg-listen")

    async def migrate(self) -> tuple[int, int]:
        async with self._connection() as conn:
            return await schema.migrate(conn)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self.options.timeout_s)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A pooled connection; the database's trouble becomes StoreUnavailable."""
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.acquire(timeout=self.options.timeout_s) as conn:
                try:
                    yield conn
                except asyncpg.InternalClientError:
                    conn.terminate()  # its protocol state is broken: never reused
                    raise
        except Exception as exc:
            if is_transient(exc):
                raise StoreUnavailable() from exc
            raise

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Conn]:
        """A connection in a read-only transaction: one snapshot for several statements."""
        async with (
            self._connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn

    async def _listen(self) -> None:
        """Keep one LISTEN connection up for as long as the store is open."""
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=self.options.timeout_s, server_settings=self._settings()
                )
                await conn.add_listener(CHANNEL, self._notified)
                self.listening.set()
                self.listens += 1
                delay = 0.1
                # Commits made while nobody listened (start-up, a restart): wake the streams.
                self.commits.publish()
                while True:
                    await asyncio.sleep(self.options.listener_check_s)
                    await conn.execute("SELECT 1", timeout=self.options.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                level = logging.WARNING if self.listening.is_set() else logging.DEBUG
                log.log(level, "PostgreSQL LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _notified(self, *_: object) -> None:
        self.commits.publish()
