"""The PostgreSQL store: many cores on one database (scale-out), same behaviour as SQLite.

Driver: asyncpg. It speaks the binary protocol natively on the event loop (no
thread hop, no libpq to install: one wheel without dependencies), pipelines
`executemany`, ships a bounded pool and LISTEN/NOTIFY callbacks; psycopg 3 would do
too, but needs libpq (or its binary wheel) and a second package for the pool.

How the SQLite store's guarantees carry over:

* Dedupe: UNIQUE (account_id, message_id) with ON CONFLICT DO NOTHING. Two cores
  inserting the same messageId at once: the second waits for the first to commit and
  then skips the row, so both callers succeed and the event is stored once.
* Cursors: `seq` comes from a one-row counter updated first thing in the ingest
  transaction (pg_schema.py says why a sequence is not enough). Its row lock lasts
  until commit, so numbers are committed in order: once a reader sees seq N, every
  smaller seq is committed or will never exist. The price: ingest transactions of
  all cores run one after another; each carries a whole group (group commit below),
  so that costs throughput only when the database itself is the bottleneck.
* Group commit: one ingest transaction in flight per process; concurrent batches
  queue and the next transaction takes them all (AsyncGroupCommitter).
* Subscribe across cores: the ingest transaction NOTIFYs (delivered at commit, never
  for a rollback); every store LISTENs on its own connection and publishes its
  CommitSignal, so streams on every core wake at once. The listener reconnects by
  itself (and wakes the streams then, for commits it may have missed).
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
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import asyncpg
import orjson

from service.errors import StoreUnavailable
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
from service.validation import CanonicalEvent

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

    durable: bool = True
    """synchronous_commit on: a commit returns once its WAL is flushed (off: faster, but
    the server's crash may lose acknowledged events, like SQLite's --no-fsync)."""

    feed_poll_s: float = 30.0
    """Subscribe streams are woken by NOTIFY; this slow re-read is only a safety net."""

    listener_check_s: float = 2.0
    """How often the LISTEN connection is checked (a `SELECT 1`) to notice a restart."""

    def __post_init__(self) -> None:
        if self.pool_size < 1 or min(self.timeout_s, self.feed_poll_s, self.listener_check_s) <= 0:
            raise ValueError("pool_size must be >= 1 and the timeouts > 0")


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

    async def write(self, conn: Conn) -> None:
        if self.links:
            rows = [(*key, kind) for key, kind in self.links.items()]
            await conn.execute(_LINKS, *map(list, zip(*rows, strict=True)))
        if self.traits:
            rows2 = [(*key, *held) for key, held in self.traits.items()]
            await conn.execute(_UPSERT_TRAITS, *map(list, zip(*rows2, strict=True)))
        if self.members:
            rows3 = [(*key, ts) for key, ts in self.members.items()]
            await conn.execute(_UPSERT_MEMBERSHIPS, *map(list, zip(*rows3, strict=True)))
        self.links.clear()
        self.traits.clear()
        self.members.clear()


# One statement, one round trip: reserve numbers for the group (the counter's row lock is
# held until commit: see the module docstring), insert the group, NOTIFY the other
# cores (delivered at commit), and read when the group's covered ids (suppression.py)
# were last deleted. Duplicates (stored before, or twice in the group: the first wins,
# ORDER BY ord) are skipped and leave holes in the numbering; so do suppressed events,
# removed once known (_remove).
# The deletions read are those of the statement's snapshot, taken before the counter's
# lock was granted: `current` is false when a deletion committed in between (it counted
# itself in `deletions` under that lock), and then they are read again (_DELETED_AT).
_WRITE_EVENTS: Final = """
    WITH reserved AS (
        UPDATE event_counter SET last_seq = last_seq + $1
        RETURNING last_seq - $1 AS base, deletions
    ), inserted AS (
        INSERT INTO events (seq, account_id, message_id, type, user_id, anonymous_id, name,
                            group_id, previous_id, timestamp_us, received_at_us, key_id,
                            payload, settings, subject)
        SELECT reserved.base + ord, a, m, t, u, an, n, g, p, ts, r, k, pl, s, sub
        FROM reserved,
             unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::text[],
                    $13::bytea[], $14::bytea[], $15::text[])
             WITH ORDINALITY AS x(a, m, t, u, an, n, g, p, ts, r, k, pl, s, sub, ord)
        ORDER BY ord
        ON CONFLICT (account_id, message_id) DO NOTHING
        RETURNING seq
    ), notified AS (
        SELECT pg_notify($16, max(seq)::text) FROM inserted HAVING count(*) > 0
    ), deleted AS (
        SELECT d.account_id, d.id, max(d.deleted_at_us) AS at
        FROM unnest($17::bigint[], $18::text[]) AS c(a, i)
        JOIN deleted_ids d ON d.account_id = c.a AND d.id = c.i
        GROUP BY d.account_id, d.id
    )
    SELECT (SELECT base FROM reserved), ARRAY(SELECT seq FROM inserted),
           (SELECT count(*) FROM notified),
           (SELECT deletions FROM reserved) = (SELECT deletions FROM event_counter),
           (SELECT json_agg(json_build_array(account_id, id, at)) FROM deleted)
"""
_DELETED_AT: Final = """
    SELECT json_agg(json_build_array(account_id, id, at)) FROM (
        SELECT d.account_id, d.id, max(d.deleted_at_us) AS at
        FROM unnest($1::bigint[], $2::text[]) AS c(a, i)
        JOIN deleted_ids d ON d.account_id = c.a AND d.id = c.i
        GROUP BY d.account_id, d.id
    ) deleted
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
_LINKED_IDS: Final = """
    WITH RECURSIVE linked(id, start) AS (
        SELECT $2::text, true
        UNION
        SELECT l.other, false FROM identity_links l
        JOIN linked ON l.account_id = $1 AND l.id = linked.id
        WHERE l.kind != 'user' OR linked.start
    )
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
        id=row[0], name=row[1], suspended=row[2], created_at_us=row[3],
        suppress_deleted_users=row[4],
    )  # fmt: skip


def _stored(row: asyncpg.Record) -> StoredRecord:
    return StoredRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
        bytes(row[11]), None if row[12] is None else bytes(row[12]),
    )  # fmt: skip


def _deleted_at(found: str | None) -> dict[int, dict[str, int]]:
    """_DELETED_AT's rows (JSON [[account, id, µs], ...] or NULL), per account and id."""
    deleted: dict[int, dict[str, int]] = {}
    for account, id, at in orjson.loads(found) if found else ():
        deleted.setdefault(account, {})[id] = at
    return deleted


def _count(status: str) -> int:
    """Rows affected, from a command status such as `DELETE 3`."""
    return int(status.rsplit(" ", 1)[-1])


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
            self._write_events, transient=lambda exc: isinstance(exc, StoreUnavailable)
        )

    # -- lifecycle ---------------------------------------------------------------------

    def _settings(self) -> dict[str, str]:
        return {
            "synchronous_commit": "on" if self.options.durable else "off",
            "application_name": "inlet",
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
            return await pg_schema.migrate(conn)

    async def close(self) -> None:
        await self._events.wait_idle()
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
        return results

    async def _write_events(self, writes: list[EventWrite]) -> list[WriteResult]:
        columns: tuple[list[Any], ...] = tuple([] for _ in range(14))
        covered: dict[tuple[int, str], None] = {}  # (account, id) whose deletion to read
        for write in writes:
            e = write.event
            row = (
                write.account_id, _text(e.message_id), e.type, _text(e.user_id),
                _text(e.anonymous_id), _text(e.name), _text(e.group_id), _text(e.previous_id),
                e.timestamp_us, e.received_at_us, write.key_id, e.raw, e.settings,
                _text(e.user_id or e.anonymous_id),
            )  # fmt: skip
            for column, value in zip(columns, row, strict=True):
                column.append(value)
            for id in covered_ids(e):
                covered[write.account_id, _text(id) or ""] = None
        candidates = ([a for a, _ in covered], [i for _, i in covered])
        async with self._connection() as conn, conn.transaction():
            written = await conn.fetchrow(
                _WRITE_EVENTS, len(writes), *columns, CHANNEL, *candidates
            )
            assert written is not None  # the statement always returns one row
            base: int = written[0]
            inserted: set[int] = set(written[1])
            found = written[4] if written[3] else await conn.fetchval(_DELETED_AT, *candidates)
            results: list[WriteResult] = [
                base + n if base + n in inserted else None for n in range(1, len(writes) + 1)
            ]
            await self._project(conn, writes, results, _deleted_at(found))
            if self.before_commit is not None:
                await self.before_commit()
        return results

    async def _project(
        self,
        conn: Conn,
        writes: list[EventWrite],
        results: list[WriteResult],
        deleted: dict[int, dict[str, int]],
    ) -> None:
        """Apply the stored events' projections in their order, in the ingest transaction,
        and take out the events of deleted users that a deletion covers (their results
        become SUPPRESSED): `deleted` says, per account, when each of the group's covered
        ids was last deleted, and grows with the group's own deletes.

        One statement per table for the whole group (one round trip each); only a delete
        depends on what came before it, so what is pending is written before each."""
        pending = _Projected()
        suppressed: list[int] = []
        for index, (write, seq) in enumerate(zip(writes, results, strict=True)):
            if not isinstance(seq, int):
                continue  # a duplicate: its projection was applied when it was stored
            account, event = write.account_id, write.event
            if (times := deleted.get(account)) and is_suppressed(
                event,
                {id: times[t] for id in covered_ids(event) if (t := _text(id) or "") in times},
                write.suppress_deleted_users,
            ):
                suppressed.append(seq)
                results[index] = SUPPRESSED
                continue
            projection = project(event)
            if projection.empty:
                continue
            pending.add(write, projection)
            if projection.erase is not None:
                await pending.write(conn)
                ids = await self._erase(conn, account, event, seq)
                at = event_time_us(event)
                times = deleted.setdefault(account, {})
                for id in ids:
                    times[id] = max(times.get(id, at), at)
        await pending.write(conn)
        if suppressed:
            await conn.execute("DELETE FROM events WHERE seq = ANY($1::bigint[])", suppressed)

    async def _erase(self, conn: Conn, account: int, delete: CanonicalEvent, seq: int) -> list[str]:
        """Erase the profile and the events stored before the delete event itself of its
        user and every id linked to it, and record the deletion of each of those ids,
        which it returns."""
        user_id = _text(delete.user_id) or ""
        ids = [row[0] for row in await conn.fetch(_LINKED_IDS, account, user_id)]
        # seq < the delete's: events later in the same group are not erased, exactly as
        # on SQLite, where they are not stored yet when the delete is applied.
        erased = _count(
            await conn.execute(
                "DELETE FROM events WHERE account_id = $1 AND subject = ANY($2::text[]) "
                "AND seq < $3 AND type != 'delete'",
                account, ids, seq,
            )
        )  # fmt: skip
        await conn.execute(
            f"DELETE FROM traits WHERE account_id = $1 AND subject_kind = '{USER}' "
            "AND subject_id = ANY($2::text[])",
            account, ids,
        )  # fmt: skip
        await conn.execute(
            "DELETE FROM memberships WHERE account_id = $1 AND member_id = ANY($2::text[])",
            account, ids,
        )  # fmt: skip
        await conn.execute(
            "DELETE FROM identity_links WHERE account_id = $1 AND id = ANY($2::text[])",
            account, ids,
        )  # fmt: skip
        # One statement: the record, its ids, and the count that tells ingest transactions
        # waiting for the counter's lock that a deletion committed (_WRITE_EVENTS).
        await conn.execute(
            """
            WITH deletion AS (
                INSERT INTO deletions (account_id, user_id, message_id, requested_at_us,
                                       erased_ids, erased_events, deleted_at_us)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
            ), counted AS (
                UPDATE event_counter SET deletions = deletions + 1
            )
            INSERT INTO deleted_ids (account_id, id, deletion_id, deleted_at_us)
            SELECT $1, i, deletion.id, $7 FROM deletion, unnest($8::text[]) AS i
            """,
            account, user_id, _text(delete.message_id) or "", now_us(), len(ids), erased,
            event_time_us(delete), ids,
        )  # fmt: skip
        log.info("deletion %s in account %d: %d ids, %d events", seq, account, len(ids), erased)
        return ids

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
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'DESC' if query.newest_first else 'ASC'} LIMIT {arg(query.limit)}"
        )
        async with self._connection() as conn:
            return [_stored(row) for row in await conn.fetch(sql, *args)]

    async def latest_sequence(self) -> int:
        # The counter, not max(seq): committed numbers only, and erasing the newest
        # events does not move "now" back.
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT last_seq FROM event_counter"))

    async def prune_events(self, received_before_us: int, limit: int) -> int:
        # As on SQLite: the oldest rows by sequence (its primary key), whatever their
        # receive time, so a run with nothing to delete reads `limit` rows, not the table.
        # Cores pruning at once wait on each other's row locks and delete each row once.
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq "
                "LIMIT $1) AND received_at_us < $2",
                limit, received_before_us,
            )  # fmt: skip
        return int(status.split()[-1])  # "DELETE n"

    async def linked_ids(self, account_id: int, id: str) -> tuple[str, ...]:
        async with self._connection() as conn:
            return tuple(row[0] for row in await conn.fetch(_LINKED_IDS, account_id, _text(id)))

    async def get_profile(self, account_id: int, id: str) -> ProfileRecord | None:
        async with self._snapshot() as conn:
            ids = [row[0] for row in await conn.fetch(_LINKED_IDS, account_id, _text(id))]
            traits = newest_traits(
                tuple(row)
                for row in await conn.fetch(
                    "SELECT key, value, timestamp_us, message_id FROM traits WHERE account_id = $1 "
                    f"AND subject_kind = '{USER}' AND subject_id = ANY($2::text[])",
                    account_id, ids,
                )
            )  # fmt: skip
            joined = await conn.fetch(
                "SELECT group_id, max(timestamp_us) FROM memberships WHERE account_id = $1 "
                'AND member_id = ANY($2::text[]) GROUP BY group_id ORDER BY group_id COLLATE "C"',
                account_id, ids,
            )  # fmt: skip
            groups = []
            for group_id, timestamp_us in joined:
                rows = await conn.fetch(
                    "SELECT key, value, timestamp_us, message_id FROM traits "
                    f"WHERE account_id = $1 AND subject_kind = '{GROUP}' AND subject_id = $2",
                    account_id, group_id,
                )  # fmt: skip
                groups.append(GroupRecord(group_id, timestamp_us, newest_traits(map(tuple, rows))))
            counts: dict[str, int] = {}
            first: int | None = None
            last: int | None = None
            for event_type, count, oldest, newest in await conn.fetch(
                "SELECT type, count(*), min(timestamp_us), max(timestamp_us) FROM events "
                "WHERE account_id = $1 AND subject = ANY($2::text[]) AND type != 'delete' "
                "GROUP BY type",
                account_id, ids,
            ):  # fmt: skip
                counts[event_type] = count
                first = oldest if first is None else min(first, oldest)
                last = newest if last is None else max(last, newest)
        if not (traits or groups or counts):
            return None
        return ProfileRecord(tuple(ids), traits, tuple(groups), first, last, counts)

    async def count_events(self, account_id: int) -> int:
        async with self._connection() as conn:
            sql = "SELECT count(*) FROM events WHERE account_id = $1"
            return int(await conn.fetchval(sql, account_id))

    async def get_event_payload(self, account_id: int, message_id: str) -> bytes | None:
        async with self._connection() as conn:
            value = await conn.fetchval(
                "SELECT payload FROM events WHERE account_id = $1 AND message_id = $2",
                account_id, _text(message_id),
            )  # fmt: skip
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
                name, now_us(),
            )  # fmt: skip
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
                name, now_us(), suppress_deleted_users,
            )  # fmt: skip
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
                value, name,
            )  # fmt: skip
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
                name, value, now,
            )  # fmt: skip
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
                conn, account_id, new_key_id, new_secret_hash, old.scopes, old.label,
                old.expires_at_us,
            )  # fmt: skip

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
            key_id, account_id, secret_hash, ",".join(scopes), label, now_us(), expires_at_us,
        )  # fmt: skip
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
