"""Erasing recorded deletions in the background, on every core."""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg

from service.errors import InletError, StoreUnavailable
from service.projections import USER, project
from service.store.base import (
    EventWrite,
)
from service.store.eraser_task import EraserTask
from service.store.postgres.database import (
    PostgresDatabase,
    feed_state,
    log,
)
from service.store.postgres.projected import Projected
from service.store.rows import (
    EVENT_COLUMNS,
    NOT_A_DELETE,
    NOT_DELETE_TYPES,
    stored_record,
)
from service.timestamps import now_us
from service.validation import canonicalise

BEING_ERASED: Final = """
    SELECT EXISTS (
        SELECT 1 FROM deleted_ids di
        JOIN deletions d ON d.id = di.deletion_id AND d.erased_at_us IS NULL
        WHERE di.account_id = $1 AND di.id = $2
    )
"""


# Every type but `delete`, as rows of a VALUES list.
ERASABLE_TYPES: Final = ", ".join(f"('{t}')" for t in NOT_DELETE_TYPES)

# What readers leave out while deletions wait to be erased: what the eraser will erase.
NOT_BEING_ERASED: Final = f"""
    NOT EXISTS (
        SELECT 1 FROM deleted_ids di
        JOIN deletions d ON d.id = di.deletion_id AND d.erased_at_us IS NULL
        JOIN accounts a ON a.id = d.account_id
        WHERE di.account_id = events.account_id AND di.id = events.subject
          AND events.{NOT_A_DELETE}
          AND (a.suppress_deleted_users OR events.seq < d.seq
               OR events.event_time_us < d.deleted_at_us)
    )
"""


class Eraser(EraserTask):
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

    def __init__(self, store: PostgresDatabase) -> None:
        # At shutdown, within the store's statement timeout.
        super().__init__(log, name="inlet-pg-eraser", stop_timeout_s=store.options.timeout_s)
        self._store = store
        self._fences: dict[int, int] = {}
        #: How many times it has looked for deletions to erase (tests wait on it).
        self.checks = 0
        #: How many times it gave up an erasure to an ingest transaction holding rows.
        self.gave_way = 0
        #: Deletions recorded and not yet erased, as of its latest look.
        self.waiting = 0

    async def _last_pass(self) -> None:
        # Not what waits for another core's transaction: another core, or this one's
        # next start, erases that.
        await self.erase_ready()

    async def _run(self) -> None:
        options = self._store.options
        while True:
            try:
                async with asyncio.timeout(options.erase_poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass  # the poll: deletions a core that crashed left unerased
            else:  # a delete committed: let the ones right behind it join its erasure
                await asyncio.sleep(options.erase_gather_s)
            self._wake.clear()
            try:
                # While deletions wait for their fence, or for rows ingest holds, look
                # again shortly: the transactions in flight end within milliseconds.
                while await self.erase_ready():
                    await asyncio.sleep(options.horizon_recheck_s)
            except Exception as exc:  # noqa: BLE001 - retried at the next wake or poll
                self.failed("erasing deletions failed (will retry)", exc)

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
            self.waiting = len(pending)
            if not pending:
                self._fences.clear()
                return False
            state = await feed_state(conn)
        next_seq, floor = state.next_seq, state.floor
        self._fences = {id: self._fences.get(id, next_seq) for id in pending}
        ready = [id for id in pending if floor is None or floor > self._fences[id]]
        if ready:
            try:
                await self._erase(ready)
            except StoreUnavailable as exc:
                if not isinstance(exc.__cause__, asyncpg.LockNotAvailableError):
                    raise
                self.gave_way += 1  # to an ingest transaction (erase_lock_timeout_s)
                return True
            for id in ready:
                del self._fences[id]
            self.waiting -= len(ready)  # erased, here or by another core
        return len(ready) < len(pending)

    async def _erase(self, deletion_ids: list[int]) -> None:
        """Erase these deletions, in one transaction (a burst of deletes costs a few
        statements, not a few per delete)."""
        async with self._store._connection() as conn, conn.transaction():
            # Generic plans of these statements scan the whole account on a database
            # without statistics (every new one): plan each with its values.
            # At least 1 ms: PostgreSQL's lock_timeout 0 means no limit at all.
            give_way_ms = max(1, round(self._store.options.erase_lock_timeout_s * 1000))
            await conn.execute(
                "SET LOCAL plan_cache_mode = force_custom_plan; "
                f"SET LOCAL lock_timeout = {give_way_ms}"
            )
            claimed = await conn.fetch(_CLAIM_DELETIONS, deletion_ids)
            if not claimed:
                return  # erased by another core, or being erased right now
            erased: dict[int, int] = {row[0]: 0 for row in claimed}
            for (deletion,) in await conn.fetch(_ERASE_EVENTS, list(erased)):
                erased[deletion] += 1
            subjects = await conn.fetch(_ERASED_IDS, list(erased))
            kept = await conn.fetch(
                f"SELECT {EVENT_COLUMNS}, account_id FROM events e "
                "WHERE (account_id, subject) IN (SELECT * FROM unnest($1::bigint[], $2::text[])) "
                f"AND {NOT_A_DELETE} ORDER BY seq",
                [row[0] for row in subjects],
                [row[1] for row in subjects],
            )
            rebuilt = Projected()
            for row in kept:
                record = stored_record(row)
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
            # Table by table in the ingest transaction's order (links, traits,
            # memberships), each emptied for the ids and refilled, so that this and an
            # ingest transaction lock rows of two tables in one order.
            ids = ([row[0] for row in subjects], [row[1] for row in subjects])
            for delete, write in (
                (_UNLINK, rebuilt.write_links),
                (_DELETE_TRAITS, rebuilt.write_traits),
                (_DELETE_MEMBERSHIPS, rebuilt.write_memberships),
            ):
                await conn.execute(delete, *ids)
                await write(conn)
            await conn.execute(
                "UPDATE deletions d SET erased_at_us = $3, erased_events = x.n "
                "FROM unnest($1::bigint[], $2::int[]) AS x(id, n) WHERE d.id = x.id",
                list(erased),
                list(erased.values()),
                now_us(),
            )
        self.erased += len(claimed)
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
_ERASE_EVENTS: Final = f"""
    WITH covered AS (
        SELECT d.id AS deletion, di.account_id, di.id, d.seq, d.deleted_at_us,
               a.suppress_deleted_users AS everything, kind.type
        FROM deletions d
        JOIN deleted_ids di ON di.deletion_id = d.id
        JOIN accounts a ON a.id = d.account_id
        CROSS JOIN (VALUES {ERASABLE_TYPES}) AS kind(type)
        WHERE d.id = ANY($1::bigint[])
    ), doomed AS (
        -- One index search per (id, type), lateral so that the type is in its
        -- condition: a join would leave it to a filter and read every delete event
        -- of the id (one per time it was deleted). OFFSET 0 keeps the planner from
        -- flattening it into such a join.
        SELECT c.deletion, x.seq FROM covered c
        CROSS JOIN LATERAL (
            SELECT e.seq FROM events e
            WHERE e.account_id = c.account_id AND e.subject = c.id AND e.type = c.type
              AND (c.everything OR e.seq < c.seq OR e.event_time_us < c.deleted_at_us)
            OFFSET 0
        ) x
    )
    DELETE FROM events e USING doomed
    WHERE e.seq = doomed.seq
    RETURNING doomed.deletion
"""


# The deleted ids, (account, id) pairs, whose profiles (traits, memberships, links) are
# rebuilt from the events that stay.
_ERASED_IDS: Final = """
    SELECT DISTINCT account_id, id FROM deleted_ids WHERE deletion_id = ANY($1::bigint[])
"""

# Each emptied for those ids, its rows locked in key order (as ingest writes them).
_UNLINK: Final = """
    DELETE FROM identity_links WHERE (account_id, id, other) IN (
        SELECT l.account_id, l.id, l.other FROM unnest($1::bigint[], $2::text[]) AS x(a, i)
        JOIN identity_links l ON l.account_id = x.a AND l.id = x.i
        ORDER BY 1, 2, 3 FOR UPDATE OF l
    )
"""
_DELETE_TRAITS: Final = f"""
    DELETE FROM traits WHERE (account_id, subject_kind, subject_id, key) IN (
        SELECT t.account_id, t.subject_kind, t.subject_id, t.key
        FROM unnest($1::bigint[], $2::text[]) AS x(a, i)
        JOIN traits t ON t.account_id = x.a AND t.subject_kind = '{USER}' AND t.subject_id = x.i
        ORDER BY 1, 2, 3, 4 FOR UPDATE OF t
    )
"""
_DELETE_MEMBERSHIPS: Final = """
    DELETE FROM memberships WHERE (account_id, member_id, group_id) IN (
        SELECT m.account_id, m.member_id, m.group_id
        FROM unnest($1::bigint[], $2::text[]) AS x(a, i)
        JOIN memberships m ON m.account_id = x.a AND m.member_id = x.i
        ORDER BY 1, 2, 3 FOR UPDATE OF m
    )
"""
