"""The PostgreSQL store: many cores on one database (scale-out), same behaviour as SQLite.

Driver: asyncpg. It speaks the binary protocol natively on the event loop (no
thread hop, no libpq to install: one wheel without dependencies), pipelines
`executemany`, ships a bounded pool and LISTEN/NOTIFY callbacks; psycopg 3 would do
too, but needs libpq (or its binary wheel) and a second package for the pool.

How the SQLite store's guarantees carry over:

* Dedupe: UNIQUE (account_id, message_id) with ON CONFLICT DO NOTHING. Two cores
  inserting the same messageId at once: the second waits for the first to commit and
  then skips the row, so both callers succeed and the event is stored once.
* Cursors: `seq` comes from a sequence, drawn at insert time, so ingest
  transactions of every core run and commit at once, in any order. A reader must
  then never move past a number that is still to be committed: before it draws,
  each ingest transaction takes a shared advisory lock on its *floor* (the lowest
  number it can draw), and readers only go up to the *feed horizon*, the lowest
  floor in flight (pg_schema.py's inlet_feed_state says why that is safe). Below
  the horizon every seq is committed or will never exist; a transaction held open
  holds back readers, never other writers. A core killed mid-transaction loses its
  connection, the server rolls the transaction back and its lock goes with it.
* Group commit: up to `commits_in_flight` ingest transactions per process at once;
  concurrent batches queue and the next transaction takes them all
  (AsyncGroupCommitter).
* Subscribe across cores: after each commit the store NOTIFYs, outside the ingest
  transaction (a transaction that NOTIFYs takes a database-wide lock at commit,
  which would order every core's commits again), at most one at a time per process;
  every store LISTENs on its own connection and publishes its CommitSignal, so
  streams on every core wake at once. While transactions are in flight a reader
  that read up to the horizon re-reads shortly, so a rolled-back transaction (which
  notifies nobody) does not leave it waiting for the slow poll. The listener
  reconnects by itself (and wakes the streams then, for commits it may have missed).
* Deletes: the ingest transaction records the deletion (and its ids, whose later events
  are suppressed from then on: suppression.py); an eraser in the background erases what
  is stored of the ids once no transaction that could have missed the record is still in
  flight, so a delete never holds up the commits of other events (_Eraser).
* Failures: connection loss, refusal, shutdown, timeouts, full disk are
  StoreUnavailable (gRPC UNAVAILABLE, HTTP 503, Segment retries); the pool makes new
  connections as the server comes back, so no restart is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

import asyncpg
import orjson

from service.errors import InletError, StoreUnavailable
from service.logs import RateLimitedLog
from service.projections import GROUP, USER, Projection, project
from service.store import pg_schema
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
    newest_traits,
    rotated_expiry,
)
from service.store.group_commit import AsyncGroupCommitter
from service.suppression import covered_ids, event_time_us, is_suppressed
from service.timestamps import now_us
from service.validation import CanonicalEvent, canonicalise

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection lent by the pool.
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

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
    before erasing); this core's own deletes are erased as soon as they commit."""

    def __post_init__(self) -> None:
        if self.pool_size < 1 or min(self.timeout_s, self.feed_poll_s, self.listener_check_s) <= 0:
            raise ValueError("pool_size must be >= 1 and the timeouts > 0")
        if (
            self.commits_in_flight < 1
            or min(self.horizon_recheck_s, self.erase_poll_s, self.idle_transaction_timeout_s) <= 0
        ):
            raise ValueError("commits_in_flight must be >= 1 and the intervals > 0")


def is_transient(exc: BaseException) -> bool:
    """The database's trouble (retry later), not a bug or bad data."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "pool is closing"; others are misuse (bugs).
        return "clos" in str(exc)
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


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; SQLite can. Ids and names with one are stored
    with U+FFFD instead (the exact bytes stay in `payload`), and looked up the same way."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


_TraitKey = tuple[int, str, str, str]


class _Projected:
    """A group's projection rows, merged as applying them one by one would leave them:
    per trait the newest `timestamp` (a tie: the later event), per membership the newest
    timestamp, each link once."""

    def __init__(self) -> None:
        self.traits: dict[_TraitKey, tuple[bytes, int, str]] = {}
        self.members: dict[tuple[int, str, str], int] = {}
        self.links: dict[tuple[int, str, str], str] = {}

    def add(self, write: EventWrite, projection: Projection) -> None:
        account, event = write.account_id, write.event
        message_id = _text(event.message_id) or ""
        for a, b, kind in projection.links:
            self.links.setdefault((account, _text(a) or "", _text(b) or ""), kind)
        for t in projection.traits:
            key = (account, t.subject_kind, _text(t.subject_id) or "", _text(t.key) or "")
            held = self.traits.get(key)
            if held is None or event.timestamp_us >= held[1]:
                self.traits[key] = (t.value, event.timestamp_us, message_id)
        if projection.membership is not None:
            member, group = projection.membership
            key3 = (account, _text(member) or "", _text(group) or "")
            self.members[key3] = max(self.members.get(key3, event.timestamp_us), event.timestamp_us)

    # Rows go in key order: transactions of several cores upserting the same users' rows
    # then lock them in one order and wait for each other, where any other order could
    # deadlock them (the server notices after deadlock_timeout, 1 s, and aborts one).

    async def write_links(self, conn: Conn) -> None:
        if self.links:
            rows = [(*key, kind) for key, kind in sorted(self.links.items())]
            await conn.execute(_LINKS, *map(list, zip(*rows, strict=True)))
            self.links.clear()

    async def write(self, conn: Conn) -> None:
        await self.write_links(conn)
        if self.traits:
            rows2 = [(*key, *held) for key, held in sorted(self.traits.items())]
            await conn.execute(_UPSERT_TRAITS, *map(list, zip(*rows2, strict=True)))
        if self.members:
            rows3 = [(*key, ts) for key, ts in sorted(self.members.items())]
            await conn.execute(_UPSERT_MEMBERSHIPS, *map(list, zip(*rows3, strict=True)))
        self.traits.clear()
        self.members.clear()


# Opens an ingest transaction and announces its floor (the lowest number it can draw),
# in one round trip, before the statement that draws numbers takes its snapshot: so a
# transaction whose snapshot missed a deletion holds its lock from before the deletion
# committed, and the eraser waits for it (_Eraser).
_BEGIN_INGEST: Final = """
    BEGIN;
    SELECT pg_advisory_xact_lock_shared((inlet_floor_tag() << 48) | (last_value + is_called::int))
    FROM event_seq
"""
# One statement, one round trip: number the group in its order and insert it, in
# messageId order so that two cores inserting the same ids wait for each other instead
# of deadlocking, and read when the group's covered ids (suppression.py) were last
# deleted. Duplicates (stored before, or twice in the group: the first wins) are
# skipped and leave holes in the numbering; so do suppressed events, removed once known.
_WRITE_EVENTS: Final = """
    WITH numbered AS MATERIALIZED (
        SELECT nextval('event_seq') AS seq, x.*
        FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[],
                    $12::bytea[], $13::bytea[], $14::text[], $15::bigint[])
             WITH ORDINALITY AS x(a, m, t, u, an, n, g, p, ts, r, k, pl, s, sub, et, ord)
        ORDER BY ord
    ), inserted AS (
        INSERT INTO events (seq, account_id, message_id, type, user_id, anonymous_id, name,
                            group_id, previous_id, timestamp_us, received_at_us, key_id,
                            payload, settings, subject, event_time_us)
        SELECT seq, a, m, t, u, an, n, g, p, ts, r, k, pl, s, sub, et FROM numbered
        ORDER BY a, m COLLATE "C", ord
        ON CONFLICT (account_id, message_id) DO NOTHING
        RETURNING seq, account_id, message_id
    ), deleted AS (
        SELECT d.account_id, d.id, max(d.deleted_at_us) AS at
        FROM unnest($16::bigint[], $17::text[]) AS c(a, i)
        JOIN deleted_ids d ON d.account_id = c.a AND d.id = c.i
        GROUP BY d.account_id, d.id
    )
    SELECT ARRAY(SELECT seq FROM inserted), ARRAY(SELECT account_id FROM inserted),
           ARRAY(SELECT message_id FROM inserted),
           (SELECT json_agg(json_build_array(account_id, id, at)) FROM deleted)
"""
# The projections of a group, one statement per table (rows deduplicated beforehand,
# see _Projected: ON CONFLICT DO UPDATE may not touch one row twice in a statement).
_UPSERT_TRAITS: Final = """
    INSERT INTO traits (account_id, subject_kind, subject_id, key, value, timestamp_us, message_id)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                         $6::bigint[], $7::text[])
    ON CONFLICT (account_id, subject_kind, subject_id, key) DO UPDATE
    SET value = excluded.value, timestamp_us = excluded.timestamp_us,
        message_id = excluded.message_id
    WHERE excluded.timestamp_us >= traits.timestamp_us
"""
_UPSERT_MEMBERSHIPS: Final = """
    INSERT INTO memberships (account_id, member_id, group_id, timestamp_us)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[])
    ON CONFLICT (account_id, member_id, group_id) DO UPDATE
    SET timestamp_us = greatest(memberships.timestamp_us, excluded.timestamp_us)
"""
_LINKS: Final = """
    INSERT INTO identity_links (account_id, id, other, kind)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
    ON CONFLICT DO NOTHING
"""
# A device's link to its users is followed only from the start (projections.py). UNION
# (not UNION ALL) stops at cycles. COLLATE "C": byte order, as SQLite sorts.
_LINKED_CTE: Final = """
    linked(id, start) AS (
        SELECT $2::text, true
        UNION
        SELECT l.other, false FROM identity_links l
        JOIN linked ON l.account_id = $1 AND l.id = linked.id
        WHERE l.kind != 'user' OR linked.start
    )
"""
_LINKED_IDS: Final = f"""
    WITH RECURSIVE {_LINKED_CTE}
    SELECT id FROM (SELECT DISTINCT id FROM linked) ids ORDER BY id COLLATE "C"
"""
_EVENT_COLUMNS: Final = """
    seq, message_id, type, user_id, anonymous_id, name, group_id, previous_id, timestamp_us,
    received_at_us, key_id, payload, settings
"""
_KEY_COLUMNS: Final = """
    k.key_id, k.account_id, a.name, a.suspended, k.scopes, k.label, k.secret_hash,
    k.created_at_us, k.expires_at_us, k.revoked_at_us, a.suppress_deleted_users
"""
_ACCOUNT_COLUMNS: Final = "id, name, suspended, created_at_us, suppress_deleted_users"
_SELECT_KEY: Final = (
    f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id "
    "WHERE k.key_id = $1"
)


def _key(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        key_id=row[0],
        account_id=row[1],
        account_name=row[2],
        account_suspended=row[3],
        scopes=tuple(row[4].split(",")),
        label=row[5],
        secret_hash=bytes(row[6]),
        created_at_us=row[7],
        expires_at_us=row[8],
        revoked_at_us=row[9],
        account_suppresses_deleted_users=row[10],
    )


def _account(row: asyncpg.Record) -> Account:
    return Account(
        id=row[0],
        name=row[1],
        suspended=row[2],
        created_at_us=row[3],
        suppress_deleted_users=row[4],
    )


def _stored(row: asyncpg.Record) -> StoredRecord:
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


def _suppressed(event: CanonicalEvent, times: dict[str, int] | None, suppress_all: bool) -> bool:
    """suppression.is_suppressed, given when the account's covered ids (as stored: _text)
    were last deleted."""
    if not times:
        return False
    deleted = {id: times[t] for id in covered_ids(event) if (t := _text(id) or "") in times}
    return is_suppressed(event, deleted, suppress_all)


def _deleted_at(found: str | None) -> dict[int, dict[str, int]]:
    """_DELETED_AT's rows (JSON [[account, id, µs], ...] or NULL), per account and id."""
    deleted: dict[int, dict[str, int]] = {}
    for account, id, at in orjson.loads(found) if found else ():
        deleted.setdefault(account, {})[id] = at
    return deleted


def _count(status: str) -> int:
    """Rows affected, from a command status such as `DELETE 3`."""
    return int(status.rsplit(" ", 1)[-1])


class _FeedState(NamedTuple):
    """pg_schema.py's inlet_feed_state: the next number the sequence gives, then the
    lowest floor of the ingest transactions in flight (None: none), and whether
    deletions wait to be erased."""

    next_seq: int
    floor: int | None
    erasing: bool

    @property
    def horizon(self) -> int:
        """Every seq below it is committed or will never exist."""
        return self.next_seq if self.floor is None else min(self.next_seq, self.floor)


async def _feed_state(conn: Conn) -> _FeedState:
    row = await conn.fetchrow("SELECT next_seq, floor_seq, erasing FROM inlet_feed_state()")
    assert row is not None  # a function call returns one row
    return _FeedState(int(row[0]), None if row[1] is None else int(row[1]), bool(row[2]))


_BEING_ERASED: Final = """
    SELECT EXISTS (
        SELECT 1 FROM deleted_ids di
        JOIN deletions d ON d.id = di.deletion_id AND d.erased_at_us IS NULL
        WHERE di.account_id = $1 AND di.id = $2
    )
"""
# What readers leave out while deletions wait to be erased: what the eraser will erase.
_NOT_BEING_ERASED: Final = """
    NOT EXISTS (
        SELECT 1 FROM deleted_ids di
        JOIN deletions d ON d.id = di.deletion_id AND d.erased_at_us IS NULL
        JOIN accounts a ON a.id = d.account_id
        WHERE di.account_id = events.account_id AND di.id = events.subject
          AND events.type != 'delete'
          AND (a.suppress_deleted_users OR events.seq < d.seq
               OR events.event_time_us < d.deleted_at_us)
    )
"""


class _Eraser:
    """Erases recorded deletions in the background, on every core (each deletion once:
    FOR UPDATE SKIP LOCKED), so that a delete's ingest transaction only records it.

    A deletion is erased once no ingest transaction that may have missed its record is
    still in flight: such a transaction announced its floor before its snapshot, so
    before the deletion committed, and its floor is at most the sequence's next number
    read after the deletion was seen (the deletion's *fence*). Once every floor in
    flight is above the fence, what it stored is committed, and the erasure sees it.

    Erased: the ids' events stored before the delete (a lower seq) or from before it
    (an earlier time, suppression.py: what a transaction that missed the record stored),
    every event of theirs where the account suppresses deleted users; then their
    traits, memberships and links, rebuilt from the events that stay (a returning user's,
    stored after the delete)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fences: dict[int, int] = {}
        self._warnings = RateLimitedLog(log)
        #: How many times it has looked for deletions to erase (tests wait on it).
        self.checks = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inlet-pg-eraser")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def kick(self) -> None:
        """A deletion committed: erase it as soon as it may be."""
        self._wake.set()

    async def _run(self) -> None:
        options = self._store.options
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.erase_poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                # While deletions wait for their fence, look again shortly: the
                # transactions in flight end within milliseconds.
                while await self.erase_ready():
                    await asyncio.sleep(options.horizon_recheck_s)
            except Exception as exc:  # noqa: BLE001 - retried at the next wake or poll
                self._warnings.warning("erase", f"erasing deletions failed (will retry): {exc}")

    async def erase_ready(self) -> bool:
        """Erase the pending deletions whose fence the floors have passed; whether some
        are still waiting."""
        self.checks += 1
        async with self._store._connection() as conn:
            pending = [
                row[0]
                for row in await conn.fetch(
                    "SELECT id FROM deletions WHERE erased_at_us IS NULL ORDER BY id LIMIT 100"
                )
            ]
            if not pending:
                self._fences.clear()
                return False
            state = await _feed_state(conn)
        next_seq, floor = state.next_seq, state.floor
        self._fences = {id: self._fences.get(id, next_seq) for id in pending}
        ready = [id for id in pending if floor is None or floor > self._fences[id]]
        if ready:
            await self._erase(ready)
            for id in ready:
                del self._fences[id]
        return len(ready) < len(pending)

    async def _erase(self, deletion_ids: list[int]) -> None:
        """Erase these deletions, in one transaction (a burst of deletes costs a few
        statements, not a few per delete)."""
        async with self._store._connection() as conn, conn.transaction():
            # Generic plans of these statements scan the whole account on a database
            # without statistics (every new one): plan each with its values.
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            claimed = await conn.fetch(_CLAIM_DELETIONS, deletion_ids)
            if not claimed:
                return  # erased by another core, or being erased right now
            erased: dict[int, int] = {row[0]: 0 for row in claimed}
            for (deletion,) in await conn.fetch(_ERASE_EVENTS, list(erased)):
                erased[deletion] += 1
            subjects = await conn.fetch(_ERASE_PROFILES, list(erased))
            kept = await conn.fetch(
                f"SELECT {_EVENT_COLUMNS}, account_id FROM events e "
                "WHERE (account_id, subject) IN (SELECT * FROM unnest($1::bigint[], $2::text[])) "
                "AND type != 'delete' ORDER BY seq",
                [row[0] for row in subjects],
                [row[1] for row in subjects],
            )
            rebuilt = _Projected()
            for row in kept:
                record = _stored(row)
                try:
                    event = canonicalise(
                        record.payload,
                        received_at_us=record.received_at_us,
                        settings=record.settings,
                    )
                except InletError as exc:  # stored by an older version, refused by this one
                    log.warning("event %s not projected again: %s", record.message_id, exc)
                    continue
                rebuilt.add(EventWrite(row[-1], record.key_id, event), project(event))
            await rebuilt.write(conn)
            await conn.execute(
                "UPDATE deletions d SET erased_at_us = $3, erased_events = x.n "
                "FROM unnest($1::bigint[], $2::int[]) AS x(id, n) WHERE d.id = x.id",
                list(erased),
                list(erased.values()),
                now_us(),
            )
        for deletion_id, account, seq in claimed:
            log.info(
                "deletion %s in account %d erased: %d events",
                seq,
                account,
                erased[deletion_id],
            )
        if kept:
            log.info("profiles rebuilt from %d events stored after their deletion", len(kept))


# The deletions to erase that no other core is erasing: (id, account, the delete's seq).
_CLAIM_DELETIONS: Final = """
    SELECT id, account_id, seq FROM deletions
    WHERE id = ANY($1::bigint[]) AND erased_at_us IS NULL
    FOR UPDATE SKIP LOCKED
"""
# The deleted ids' events stored before the delete or from before it (all of them where
# the account suppresses deleted users): one row, the deletion's id, per event erased.
_ERASE_EVENTS: Final = """
    WITH covered AS (
        SELECT d.id AS deletion, di.account_id, di.id, d.seq, d.deleted_at_us,
               a.suppress_deleted_users AS everything
        FROM deletions d
        JOIN deleted_ids di ON di.deletion_id = d.id
        JOIN accounts a ON a.id = d.account_id
        WHERE d.id = ANY($1::bigint[])
    )
    DELETE FROM events e USING covered c
    WHERE e.account_id = c.account_id AND e.subject = c.id AND e.type != 'delete'
      AND (c.everything OR e.seq < c.seq OR e.event_time_us < c.deleted_at_us)
    RETURNING c.deletion
"""
# Their profiles (traits, memberships, links), rebuilt afterwards from the events that
# stay; returns the (account, id) pairs.
_ERASE_PROFILES: Final = f"""
    WITH ids AS (
        SELECT DISTINCT di.account_id, di.id FROM deleted_ids di
        WHERE di.deletion_id = ANY($1::bigint[])
    ), traits_gone AS (
        DELETE FROM traits t USING ids
        WHERE t.account_id = ids.account_id AND t.subject_kind = '{USER}'
          AND t.subject_id = ids.id
    ), memberships_gone AS (
        DELETE FROM memberships m USING ids
        WHERE m.account_id = ids.account_id AND m.member_id = ids.id
    ), links_gone AS (
        DELETE FROM identity_links l USING ids
        WHERE l.account_id = ids.account_id AND l.id = ids.id
    )
    SELECT account_id, id FROM ids
"""


class PostgresStore:
    """Store on a PostgreSQL database. Create it, `await open()`, use it, `await close()`.

    Bound to the event loop it is opened on (asyncpg connections are).
    """

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
        #: Test seam: awaited inside the ingest transaction, just before COMMIT.
        self.before_commit: Callable[[], Awaitable[None]] | None = None
        self._events = AsyncGroupCommitter[EventWrite, WriteResult](
            self._write_events,
            transient=lambda exc: isinstance(exc, StoreUnavailable),
            # Each needs a connection; reads need some too.
            max_in_flight=min(self.options.commits_in_flight, self.options.pool_size),
        )
        self._announcer: asyncio.Task[None] | None = None
        self._announce_again = False
        self._nudge: asyncio.TimerHandle | None = None
        self._eraser = _Eraser(self)

    @property
    def erase_checks(self) -> int:
        """How many times the eraser has looked for deletions to erase."""
        return self._eraser.checks

    # -- lifecycle ---------------------------------------------------------------------

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
        self._eraser.start()

    async def migrate(self) -> tuple[int, int]:
        async with self._connection() as conn:
            return await pg_schema.migrate(conn)

    async def close(self) -> None:
        await self._events.wait_idle()
        await self._eraser.stop()
        if self._nudge is not None:
            self._nudge.cancel()
            self._nudge = None
        if self._announcer is not None:
            with contextlib.suppress(Exception):
                await self._announcer
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
                yield conn
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

    # -- events ------------------------------------------------------------------------

    async def write_events(self, writes: Sequence[EventWrite]) -> list[WriteResult]:
        results = await self._events.submit(writes)
        if any(isinstance(seq, int) for seq in results):
            self.commits.publish()  # this core's streams, without waiting for NOTIFY
            self._announce()
        return results

    def _announce(self) -> None:
        """NOTIFY the other cores, after the commit and outside it; one at a time, the
        commits made meanwhile covered by the next one."""
        self._announce_again = True
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._notify(), name="inlet-pg-notify")

    async def _notify(self) -> None:
        while self._announce_again:
            self._announce_again = False
            try:
                async with self._connection() as conn:
                    await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
            except Exception as exc:  # noqa: BLE001 - the streams' poll covers a lost one
                log.debug("NOTIFY after a commit failed: %s", exc)
                return

    async def _horizon(self, conn: Conn) -> _FeedState:
        """Where readers stop (the horizon), read before the rows (its own statement,
        so theirs is a later snapshot)."""
        state = await _feed_state(conn)
        if state.floor is not None and self._nudge is None:
            # Transactions in flight hold the horizon back: re-read soon even if none of
            # them commits (a rollback notifies nobody).
            self._nudge = asyncio.get_running_loop().call_later(
                self.options.horizon_recheck_s, self._renudge
            )
        return state

    def _renudge(self) -> None:
        self._nudge = None
        self.commits.publish()

    async def _write_events(self, writes: list[EventWrite]) -> list[WriteResult]:
        columns: tuple[list[Any], ...] = tuple([] for _ in range(15))
        covered: dict[tuple[int, str], None] = {}  # (account, id) whose deletion to read
        for write in writes:
            event = write.event
            row = (
                write.account_id,
                _text(event.message_id),
                event.type,
                _text(event.user_id),
                _text(event.anonymous_id),
                _text(event.name),
                _text(event.group_id),
                _text(event.previous_id),
                event.timestamp_us,
                event.received_at_us,
                write.key_id,
                event.raw,
                event.settings,
                _text(event.user_id or event.anonymous_id),
                event_time_us(event),
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
            for id in covered_ids(event):
                covered[write.account_id, _text(id) or ""] = None
        candidates = ([a for a, _ in covered], [i for _, i in covered])
        deletes = False
        async with self._connection() as conn:
            await conn.execute(_BEGIN_INGEST)
            try:
                written = await conn.fetchrow(_WRITE_EVENTS, *columns, *candidates)
                assert written is not None  # the statement always returns one row
                inserted = dict(
                    zip(zip(written[1], written[2], strict=True), written[0], strict=True)
                )
                # The first of the group's writes of a messageId was stored (or none).
                results: list[WriteResult] = [
                    inserted.pop(key, None) for key in zip(columns[0], columns[1], strict=True)
                ]
                deletes = await self._project(conn, writes, results, _deleted_at(written[3]))
                if self.before_commit is not None:
                    await self.before_commit()
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.is_closed() and conn.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
        if deletes:
            self._eraser.kick()
        return results

    async def _project(
        self,
        conn: Conn,
        writes: list[EventWrite],
        results: list[WriteResult],
        deleted: dict[int, dict[str, int]],
    ) -> bool:
        """Apply the stored events' projections in their order, in the ingest transaction,
        and take out the events of deleted users that a deletion covers (their results
        become SUPPRESSED): `deleted` says, per account, when each of the group's covered
        ids was last deleted, and grows with the group's own deletes, whose deletions
        are recorded here and erased by the eraser after the commit. Returns whether
        the group recorded any.

        One statement per table for the whole group (one round trip each)."""
        recorded = False
        pending = _Projected()
        suppressed: list[int] = []
        for index, (write, seq) in enumerate(zip(writes, results, strict=True)):
            account, event = write.account_id, write.event
            if not isinstance(seq, int):
                # A duplicate: its projection was applied when it was stored. One that a
                # deletion covers is being erased (the eraser runs after the commit):
                # suppressed, as it is once the erasure is done.
                if _suppressed(event, deleted.get(account), suppress_all=False):
                    results[index] = SUPPRESSED
                continue
            if _suppressed(event, deleted.get(account), write.suppress_deleted_users):
                suppressed.append(seq)
                results[index] = SUPPRESSED
                continue
            projection = project(event)
            if projection.empty:
                continue
            pending.add(write, projection)
            if projection.erase is not None:
                # The links the deletion follows. Traits and memberships wait for the
                # end (each table written once, in one order): the eraser rebuilds the
                # deleted ids' from the events that stay.
                await pending.write_links(conn)
                ids = await self._record_deletion(conn, account, event, seq)
                recorded = True
                at = event_time_us(event)
                times = deleted.setdefault(account, {})
                for id in ids:
                    times[id] = max(times.get(id, at), at)
        await pending.write(conn)
        if suppressed:
            await conn.execute("DELETE FROM events WHERE seq = ANY($1::bigint[])", suppressed)
        return recorded

    async def _record_deletion(
        self, conn: Conn, account: int, delete: CanonicalEvent, seq: int
    ) -> list[str]:
        """Record the deletion of the delete's user and of every id linked to it, which it
        returns; from the commit on, their events from before it are suppressed, and the
        eraser erases what is stored of them."""
        rows = await conn.fetch(
            f"""
            WITH RECURSIVE {_LINKED_CTE}, deletion AS (
                INSERT INTO deletions (account_id, user_id, message_id, requested_at_us,
                                       erased_ids, erased_events, deleted_at_us, seq)
                SELECT $1, $2, $3, $4, count(DISTINCT id), 0, $5, $6 FROM linked
                RETURNING id
            )
            INSERT INTO deleted_ids (account_id, id, deletion_id, deleted_at_us)
            SELECT DISTINCT $1, linked.id, deletion.id, $5::bigint FROM deletion, linked
            RETURNING id
            """,
            account,
            _text(delete.user_id) or "",
            _text(delete.message_id) or "",
            now_us(),
            event_time_us(delete),
            seq,
        )
        return [row[0] for row in rows]

    async def list_events(self, query: EventQuery) -> list[StoredRecord]:
        where: list[str] = ["account_id = $1"]
        args: list[object] = [query.account_id]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.ids is not None:
            where.append(f"subject = ANY({arg([_text(i) for i in query.ids])}::text[])")
        if query.types:
            where.append(f"type = ANY({arg(list(query.types))}::text[])")
        if query.name is not None:
            where.append(f"name = {arg(_text(query.name))}")
        if query.since_us is not None:
            where.append(f"timestamp_us >= {arg(query.since_us)}")
        if query.until_us is not None:
            where.append(f"timestamp_us < {arg(query.until_us)}")
        if query.after is not None:
            where.append(f"seq {'<' if query.newest_first else '>'} {arg(query.after)}")
        # Read after the horizon, in a statement of its own (its own snapshot): what is
        # below it and committed is all there will ever be below it.
        horizon_at = len(args)
        where.append(f"seq < {arg(None)}")
        order = f"ORDER BY seq {'DESC' if query.newest_first else 'ASC'} LIMIT {arg(query.limit)}"
        async with self._connection() as conn:
            state = await self._horizon(conn)
            args[horizon_at] = state.horizon
            if state.erasing:
                where.append(_NOT_BEING_ERASED)
            sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} {order}"
            return [_stored(row) for row in await conn.fetch(sql, *args)]

    async def latest_sequence(self) -> int:
        # The horizon, not max(seq): committed numbers only (a stream starting "now"
        # must not skip a transaction still in flight below it), and erasing the
        # newest events does not move "now" back.
        async with self._connection() as conn:
            return (await self._horizon(conn)).horizon - 1

    async def prune_events(self, received_before_us: int, limit: int) -> int:
        # As on SQLite: the oldest rows by sequence (its primary key), whatever their
        # receive time, so a run with nothing to delete reads `limit` rows, not the table.
        # Cores pruning at once wait on each other's row locks and delete each row once.
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq "
                "LIMIT $1) AND received_at_us < $2",
                limit,
                received_before_us,
            )
        return int(status.split()[-1])  # "DELETE n"

    async def linked_ids(self, account_id: int, id: str) -> tuple[str, ...]:
        async with self._connection() as conn:
            return tuple(row[0] for row in await conn.fetch(_LINKED_IDS, account_id, _text(id)))

    async def get_profile(self, account_id: int, id: str) -> ProfileRecord | None:
        async with self._snapshot() as conn:
            ids = [row[0] for row in await conn.fetch(_LINKED_IDS, account_id, _text(id))]
            if await conn.fetchval(_BEING_ERASED, account_id, _text(id)):
                return None  # deleted, and erased in a moment: no profile meanwhile
            traits = newest_traits(
                tuple(row)
                for row in await conn.fetch(
                    "SELECT key, value, timestamp_us, message_id FROM traits WHERE account_id = $1 "
                    f"AND subject_kind = '{USER}' AND subject_id = ANY($2::text[])",
                    account_id,
                    ids,
                )
            )
            joined = await conn.fetch(
                "SELECT group_id, max(timestamp_us) FROM memberships WHERE account_id = $1 "
                'AND member_id = ANY($2::text[]) GROUP BY group_id ORDER BY group_id COLLATE "C"',
                account_id,
                ids,
            )
            groups = []
            for group_id, timestamp_us in joined:
                rows = await conn.fetch(
                    "SELECT key, value, timestamp_us, message_id FROM traits "
                    f"WHERE account_id = $1 AND subject_kind = '{GROUP}' AND subject_id = $2",
                    account_id,
                    group_id,
                )
                groups.append(GroupRecord(group_id, timestamp_us, newest_traits(map(tuple, rows))))
            counts: dict[str, int] = {}
            first: int | None = None
            last: int | None = None
            for event_type, count, oldest, newest in await conn.fetch(
                "SELECT type, count(*), min(timestamp_us), max(timestamp_us) FROM events "
                "WHERE account_id = $1 AND subject = ANY($2::text[]) AND type != 'delete' "
                "GROUP BY type",
                account_id,
                ids,
            ):
                counts[event_type] = count
                first = oldest if first is None else min(first, oldest)
                last = newest if last is None else max(last, newest)
        if not (traits or groups or counts):
            return None
        return ProfileRecord(tuple(ids), traits, tuple(groups), first, last, counts)

    async def wait_erased(self, timeout_s: float = 10.0) -> None:
        """Until every deletion recorded so far is erased (the eraser runs in the
        background: readers leave out what it will erase meanwhile).

        Raises:
            TimeoutError: still not erased after `timeout_s`.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                async with self._connection() as conn:
                    if not await conn.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM deletions WHERE erased_at_us IS NULL)"
                    ):
                        return
                self._eraser.kick()
                await asyncio.sleep(self.options.horizon_recheck_s)

    async def count_events(self, account_id: int) -> int:
        async with self._connection() as conn:
            sql = "SELECT count(*) FROM events WHERE account_id = $1"
            return int(await conn.fetchval(sql, account_id))

    async def get_event_payload(self, account_id: int, message_id: str) -> bytes | None:
        async with self._connection() as conn:
            value = await conn.fetchval(
                "SELECT payload FROM events WHERE account_id = $1 AND message_id = $2 "
                f"AND {_NOT_BEING_ERASED}",
                account_id,
                _text(message_id),
            )
        return None if value is None else bytes(value)

    # -- accounts, keys, switches ------------------------------------------------------

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_SELECT_KEY, key_id)
        return None if row is None else _key(row)

    async def ensure_account(self, name: str) -> Account:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO accounts (name, created_at_us) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                name,
                now_us(),
            )
            row = await conn.fetchrow(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = $1", name
            )
        assert row is not None  # inserted or already there, in this transaction
        return _account(row)

    async def create_account(
        self, name: str, suppress_deleted_users: bool = False
    ) -> Account | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO accounts (name, created_at_us, suppress_deleted_users) "
                f"VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING {_ACCOUNT_COLUMNS}",
                name,
                now_us(),
                suppress_deleted_users,
            )
        return None if row is None else _account(row)

    async def get_account(self, name: str) -> Account | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = $1", name
            )
        return None if row is None else _account(row)

    async def list_accounts(self) -> list[Account]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f'SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name COLLATE "C"'
            )
        return [_account(row) for row in rows]

    async def set_account_suspended(self, name: str, suspended: bool) -> Account:
        return await self._set_account(name, "suspended", suspended)

    async def set_account_suppress_deleted_users(self, name: str, on: bool) -> Account:
        return await self._set_account(name, "suppress_deleted_users", on)

    async def _set_account(self, name: str, column: str, value: bool) -> Account:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE accounts SET {column} = $1 WHERE name = $2 RETURNING {_ACCOUNT_COLUMNS}",
                value,
                name,
            )
        if row is None:
            raise StoreError(f"no account named {name!r}")
        return _account(row)

    async def get_switch(self, name: str) -> tuple[str, int] | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT value, changed_at_us FROM switches WHERE name = $1", name
            )
        return None if row is None else (row[0], row[1])

    async def set_switch(self, name: str, value: str) -> int:
        now = now_us()
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO switches (name, value, changed_at_us) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "changed_at_us = excluded.changed_at_us",
                name,
                value,
                now,
            )
        return now

    async def create_key(
        self,
        account_id: int,
        key_id: str,
        secret_hash: bytes,
        scopes: Sequence[str],
        label: str = "",
        expires_at_us: int | None = None,
    ) -> KeyRecord:
        async with self._connection() as conn, conn.transaction():
            return await self._insert_key(
                conn, account_id, key_id, secret_hash, scopes, label, expires_at_us
            )

    async def rotate_key(
        self,
        key_id: str,
        account_id: int,
        new_key_id: str,
        new_secret_hash: bytes,
        old_valid_until_us: int,
    ) -> KeyRecord | None:
        async with self._connection() as conn, conn.transaction():
            # FOR UPDATE: two rotations of one key at once (two cores) are one after
            # the other, so the second sees the expiry the first set.
            await conn.execute("SELECT 1 FROM api_keys WHERE key_id = $1 FOR UPDATE", key_id)
            row = await conn.fetchrow(_SELECT_KEY, key_id)
            old = None if row is None else _key(row)
            until = rotated_expiry(old, account_id, old_valid_until_us, now_us())
            if old is None or until is None:
                return None
            await conn.execute(
                "UPDATE api_keys SET expires_at_us = $1 WHERE key_id = $2", until, key_id
            )
            return await self._insert_key(
                conn,
                account_id,
                new_key_id,
                new_secret_hash,
                old.scopes,
                old.label,
                old.expires_at_us,
            )

    @staticmethod
    async def _insert_key(
        conn: Conn,
        account_id: int,
        key_id: str,
        secret_hash: bytes,
        scopes: Sequence[str],
        label: str,
        expires_at_us: int | None,
    ) -> KeyRecord:
        await conn.execute(
            "INSERT INTO api_keys (key_id, account_id, secret_hash, scopes, label, "
            "created_at_us, expires_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            key_id,
            account_id,
            secret_hash,
            ",".join(scopes),
            label,
            now_us(),
            expires_at_us,
        )
        row = await conn.fetchrow(_SELECT_KEY, key_id)
        assert row is not None  # inserted just above, in this transaction
        return _key(row)

    async def list_keys(
        self, account_id: int | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id"
        where: list[str] = []
        args: list[object] = []
        if account_id is not None:
            args.append(account_id)
            where.append("k.account_id = $1")
        if not include_revoked:
            where.append("k.revoked_at_us IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += ' ORDER BY a.name COLLATE "C", k.created_at_us'
        async with self._connection() as conn:
            return [_key(row) for row in await conn.fetch(sql, *args)]

    async def revoke_key(self, key_id: str, account_id: int | None = None) -> KeyRecord | None:
        sql = "UPDATE api_keys SET revoked_at_us = coalesce(revoked_at_us, $1) WHERE key_id = $2"
        args: list[object] = [now_us(), key_id]
        if account_id is not None:
            sql += " AND account_id = $3"
            args.append(account_id)
        async with self._connection() as conn, conn.transaction():
            if _count(await conn.execute(sql, *args)) == 0:
                return None
            row = await conn.fetchrow(_SELECT_KEY, key_id)
        return None if row is None else _key(row)
