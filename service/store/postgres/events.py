"""Events on PostgreSQL: the ingest transaction (numbering, dedupe, suppression,
projections, deletions recorded), the feed up to the horizon, retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson

from service.errors import StoreUnavailable
from service.projections import Projection, project
from service.store.base import (
    SUPPRESSED,
    EventQuery,
    EventWrite,
    StoredRecord,
    WriteResult,
)
from service.store.group_commit import AsyncGroupCommitter
from service.store.postgres.database import (
    CHANNEL,
    Conn,
    FeedState,
    PostgresDatabase,
    PostgresOptions,
    as_columns,
    feed_state,
    log,
    pg_text,
)
from service.store.postgres.eraser import NOT_BEING_ERASED, Eraser
from service.store.postgres.known_links import KnownLinks, LinkKey
from service.store.postgres.projected import LINKED_CTE, Projected
from service.store.rows import (
    EVENT_COLUMNS,
    stored_record,
)
from service.suppression import covered_ids, is_suppressed
from service.timestamps import now_us
from service.validation import CanonicalEvent

# Opens an ingest transaction and announces its floor (the lowest number it can draw),
# in one round trip, before the statement that draws numbers takes its snapshot: so a
# transaction whose snapshot missed a deletion holds its lock from before the deletion
# committed, and the eraser waits for it (Eraser). Its statements run on their generic
# plans: left to choose, the server planned them anew at every execution (custom plans
# of the same shape, a sixth of the backends' CPU on tracks); each is a search of a key
# per row whatever the values, which tests/store/test_postgres.py checks.
_BEGIN_INGEST: Final = """
    BEGIN;
    SET LOCAL plan_cache_mode = force_generic_plan;
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
        -- One search of the key per id, lateral: a join would hash the whole table
        -- (the planner expects 100 ids from unnest), and deleted ids are never removed.
        SELECT c.a, c.i, x.at
        FROM unnest($16::bigint[], $17::text[]) AS c(a, i),
             LATERAL (SELECT max(d.deleted_at_us) AS at FROM deleted_ids d
                      WHERE d.account_id = c.a AND d.id = c.i) AS x
        WHERE x.at IS NOT NULL
    )
    SELECT ARRAY(SELECT seq FROM inserted), ARRAY(SELECT account_id FROM inserted),
           ARRAY(SELECT message_id FROM inserted),
           (SELECT json_agg(json_build_array(a, i, at)) FROM deleted)
"""


def _suppressed(event: CanonicalEvent, times: dict[str, int] | None, suppress_all: bool) -> bool:
    """suppression.is_suppressed, given when the account's covered ids (as stored: pg_text)
    were last deleted."""
    if not times:
        return False
    deleted = {id: times[t] for id in covered_ids(event) if (t := pg_text(id) or "") in times}
    return is_suppressed(event, deleted, suppress_all)


def _deleted_at(found: str | None) -> dict[int, dict[str, int]]:
    """_DELETED_AT's rows (JSON [[account, id, µs], ...] or NULL), per account and id."""
    deleted: dict[int, dict[str, int]] = {}
    for account, id, at in orjson.loads(found) if found else ():
        deleted.setdefault(account, {})[id] = at
    return deleted


class PostgresEvents(PostgresDatabase):
    """EventStore on PostgreSQL; deletions are erased by the Eraser, in the background."""

    def __init__(self, dsn: str, options: PostgresOptions | None = None) -> None:
        super().__init__(dsn, options)
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
        self._eraser = Eraser(self)
        self._known_links = KnownLinks()

    @property
    def eraser(self) -> Eraser:
        """The background eraser: its counts (looks, erased, gave way, failures, waiting)
        are exported as metrics, and tests wait on them."""
        return self._eraser

    async def open(self, *, migrate: bool = True) -> None:
        await super().open(migrate=migrate)
        self._eraser.start()

    async def close(self) -> None:
        await self._events.wait_idle()
        await self._eraser.stop()
        if self._nudge is not None:
            self._nudge.cancel()
            self._nudge = None
        if self._announcer is not None:
            with contextlib.suppress(Exception):
                await self._announcer
        await super().close()

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

    async def _horizon(self, conn: Conn) -> FeedState:
        """Where readers stop (the horizon), read before the rows (its own statement,
        so theirs is a later snapshot)."""
        state = await feed_state(conn)
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
        rows: list[tuple[Any, ...]] = []
        covered: dict[tuple[int, str], None] = {}  # (account, id) whose deletion to read
        # The links already known to be stored, whose ids' deletions are read too: each
        # is skipped if none has one (known_links.py).
        known: set[LinkKey] = set()
        projections = [project(write.event) for write in writes]
        for write, projection in zip(writes, projections, strict=True):
            event = write.event
            rows.append(
                (
                    write.account_id,
                    pg_text(event.message_id),
                    event.type,
                    pg_text(event.user_id),
                    pg_text(event.anonymous_id),
                    pg_text(event.name),
                    pg_text(event.group_id),
                    pg_text(event.previous_id),
                    event.timestamp_us,
                    event.received_at_us,
                    write.key_id,
                    event.raw,
                    event.settings,
                    pg_text(event.user_id or event.anonymous_id),
                    event.event_time_us,
                )
            )
            for id in covered_ids(event):
                covered[write.account_id, pg_text(id) or ""] = None
            for a, b, _ in projection.links:
                key = (write.account_id, pg_text(a) or "", pg_text(b) or "")
                if key in self._known_links:
                    known.add(key)
                    covered[key[0], key[1]] = covered[key[0], key[2]] = None
        columns = as_columns(rows)
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
                deleted = _deleted_at(written[3])
                pending = Projected()
                deletes = await self._project(
                    conn, writes, projections, results, deleted, pending, known
                )
                if self.before_commit is not None:
                    await self.before_commit()
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.is_closed() and conn.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
        self._known_links.remember(pending.written_links, deleted)
        if deletes:
            self._eraser.kick()
        return results

    async def _project(
        self,
        conn: Conn,
        writes: list[EventWrite],
        projections: list[Projection],
        results: list[WriteResult],
        deleted: dict[int, dict[str, int]],
        pending: Projected,
        known: set[LinkKey],
    ) -> bool:
        """Apply the stored events' projections in their order, in the ingest transaction
        (through `pending`), and take out the events of deleted users that a deletion
        covers (their results become SUPPRESSED): `deleted` says, per account, when each
        of the group's covered ids (and the ids of its `known` links) was last deleted,
        and grows with the group's own deletes, whose deletions are recorded here and
        erased by the eraser after the commit. Returns whether the group recorded any.

        One statement per table for the whole group (one round trip each); none for
        links when every link is known and none of its ids deleted (known_links.py)."""
        recorded = False
        suppressed: list[int] = []
        for index, (write, seq, projection) in enumerate(
            zip(writes, results, projections, strict=True)
        ):
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
            if projection.empty:
                continue
            pending.add(write, projection, self._link_skipper(known, deleted.get(account)))
            if projection.erase is not None:
                # The links the deletion follows. Traits and memberships wait for the
                # end (each table written once, in one order): the eraser rebuilds the
                # deleted ids' from the events that stay.
                await pending.write_links(conn)
                ids = await self._record_deletion(conn, account, event, seq)
                recorded = True
                at = event.event_time_us
                times = deleted.setdefault(account, {})
                for id in ids:
                    times[id] = max(times.get(id, at), at)
        await pending.write(conn)
        if suppressed:
            await conn.execute("DELETE FROM events WHERE seq = ANY($1::bigint[])", suppressed)
        return recorded

    def _link_skipper(
        self, known: set[LinkKey], deleted: dict[str, int] | None
    ) -> Callable[[LinkKey], bool] | None:
        """Which links of an event to leave out: those known to be stored before the
        group's deletions were read, none of whose ids has a deletion (`deleted`, the
        account's, as the group's events so far leave it)."""
        if not known:
            return None
        links, gone = self._known_links, deleted or {}
        return lambda key: key in known and links.skippable(key, gone)

    async def _record_deletion(
        self, conn: Conn, account: int, delete: CanonicalEvent, seq: int
    ) -> list[str]:
        """Record the deletion of the delete's user and of every id linked to it, which it
        returns; from the commit on, their events from before it are suppressed, and the
        eraser erases what is stored of them."""
        rows = await conn.fetch(
            f"""
            WITH RECURSIVE {LINKED_CTE}, deletion AS (
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
            pg_text(delete.user_id) or "",
            pg_text(delete.message_id) or "",
            now_us(),
            delete.event_time_us,
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
            where.append(f"subject = ANY({arg([pg_text(i) for i in query.ids])}::text[])")
        if query.types:
            where.append(f"type = ANY({arg(list(query.types))}::text[])")
        if query.name is not None:
            where.append(f"name = {arg(pg_text(query.name))}")
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
                where.append(NOT_BEING_ERASED)
            sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} {order}"
            return [stored_record(row) for row in await conn.fetch(sql, *args)]

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
                f"AND {NOT_BEING_ERASED}",
                account_id,
                pg_text(message_id),
            )
        return None if value is None else bytes(value)
