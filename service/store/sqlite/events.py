"""Events on SQLite: the write path (group commit, inserts, projections, deletions,
suppression), history, retention.

Event groups insert on the event loop (short statements; sqlite3 drops the GIL around
each, and a hop to a thread per statement cost more than it saved); COMMIT and a BEGIN
that must wait run on the writer thread (database.py). A `delete` erases the profile and
records what the eraser (eraser.py) erases after the commit: its ids' events.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Unpack

import orjson

from service.errors import StoreUnavailable
from service.projections import USER, Projection, project
from service.store.base import (
    SUPPRESSED,
    CommitSignal,
    EventQuery,
    EventWrite,
    StoredRecord,
    WriteResult,
)
from service.store.group_commit import AsyncGroupCommitter
from service.store.rows import EVENT_COLUMNS, NOT_A_DELETE, stored_record
from service.store.sqlite.database import SqliteDatabase, SqliteOptions, WriterLock
from service.store.sqlite.eraser import NOT_BEING_ERASED, Eraser, erase_recorded
from service.store.sqlite.profiles import IN_IDS, LINKED_IDS, OF_IDS
from service.suppression import covered_ids, is_suppressed
from service.timestamps import now_us
from service.validation import CanonicalEvent

log = logging.getLogger(__name__)

_MAX_KNOWN_IDS: Final = 100_000

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
_LATEST_SEQ: Final = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)"
# The oldest rows by sequence (the table's own order: no index on the receive time is
# needed, and a run with nothing to delete reads `limit` rows, not the table).
_PRUNE_EVENTS: Final = """
    DELETE FROM events
    WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?) AND received_at_us < ?
"""
# The events a delete leaves to the eraser: its ids' stored so far (`before_seq`, the
# delete's own number), for the ids that have any (Segment passes on deletions of users
# a destination may never have seen: those cost the eraser nothing). A user's delete
# events stay: each is the record of a deletion.
_LEAVE_TO_ERASER: Final = f"""
    INSERT INTO erasing (account_id, id, before_seq, deletion_id)
    SELECT ?1, value, ?2, ?3 FROM json_each(?4)
    WHERE EXISTS (
        SELECT 1 FROM events e
        WHERE e.account_id = ?1 AND e.subject = value AND e.{NOT_A_DELETE} AND e.seq < ?2
    )
"""
# When each of these ids (a JSON array) of an account was last deleted.
_DELETED_AT: Final = (
    "SELECT id, max(deleted_at_us) FROM deleted_ids "
    f"WHERE account_id = ? AND id {IN_IDS} GROUP BY id"
)
# Stored, and not left to the eraser (erased, as far as anyone can tell).
_IS_STORED: Final = (
    f"SELECT 1 FROM events WHERE account_id = ? AND message_id = ? AND {NOT_BEING_ERASED}"
)
_DELETED_SINCE: Final = (
    "SELECT account_id, id FROM deleted_ids WHERE deletion_id > ? AND deletion_id <= ?"
)


class SqliteEvents(SqliteDatabase):
    """EventStore on SQLite."""

    #: Other processes writing to the file (a second core) cannot wake this one's
    #: streams: a caught-up stream re-reads this often.
    feed_poll_s = 1.0
    #: The eraser (eraser.py) lets the deletes of this long after one commits join its
    #: erasure, and looks this often for records another process left.
    erase_gather_s = 0.2
    erase_poll_s = 5.0
    #: At most this many events erased per transaction (ingest waits for each).
    erase_max_events = 500

    def __init__(self, path: Path, **options: Unpack[SqliteOptions]) -> None:
        super().__init__(path, **options)
        # Links known to be stored, (account, id) -> its others: most events of a known
        # user carry the same two ids again, and skipping their insert keeps ingest
        # cheap. Keyed by the link's id because an erasure removes the links of its
        # ids (and only those, from the cache too). Touched only by whoever holds the
        # write lock.
        self._known_links: OrderedDict[tuple[int, str], set[str]] = OrderedDict()
        #: The newest deletion the cache has accounted for; None: unknown (none yet).
        self._newest_deletion: int | None = None
        self.commits = CommitSignal()
        self._events = AsyncGroupCommitter[EventWrite, WriteResult](
            self._commit_events,
            transient=lambda exc: isinstance(exc, StoreUnavailable),
        )
        #: Test seam: called with each run of events just inserted, on the thread that
        #: inserted them, inside the group's transaction; what it raises fails the group.
        self.on_insert: Callable[[Sequence[EventWrite]], None] | None = None
        self._eraser: Eraser | None = None

    async def open(self, *, migrate: bool = True) -> None:
        await super().open(migrate=migrate)
        if not migrate:
            return  # `inlet migrate`: the schema may be older than the eraser's
        self._eraser = Eraser(
            lambda: self._run(
                self._transaction,
                functools.partial(erase_recorded, max_events=self.erase_max_events),
            ),
            self._has_erasing_records,
            gather_s=self.erase_gather_s,
            poll_s=self.erase_poll_s,
        )
        self._eraser.start()

    async def close(self) -> None:
        await self._events.wait_idle()
        if self._eraser is not None:
            await self._eraser.stop()
        await super().close()

    async def _has_erasing_records(self) -> bool:
        def read(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM erasing)").fetchone()[0])

        return await self._read(read)

    @property
    def eraser(self) -> Eraser | None:
        """The background eraser (its counts), once open."""
        return self._eraser

    async def wait_erased(self, timeout_s: float = 10.0) -> None:
        """Erase what deletions left to erase, now (the eraser does within its gather)."""
        if self._eraser is not None:
            async with asyncio.timeout(timeout_s):
                await self._eraser.erase_now()

    # -- the write path ----------------------------------------------------------------

    async def write_events(self, writes: Sequence[EventWrite]) -> list[WriteResult]:
        results = await self._events.submit(writes)
        if any(isinstance(seq, int) for seq in results):
            self.commits.publish()
            if self._eraser is not None and any(w.event.type == "delete" for w in writes):
                self._eraser.kick()
        return results

    async def _commit_events(self, writes: list[EventWrite]) -> list[WriteResult]:
        """One group's transaction.

        The inserts run here, on the event loop, deletes too (the erasure of their
        events, which may take long, is the eraser's); only what may wait runs on the
        writer thread: COMMIT (the fsync), BEGIN when another process holds the write
        lock. Python's sqlite3 gives up the GIL around every statement, so inserting on
        the writer thread made it queue for the GIL several times per event behind the
        HTTP side, and each hand-off cost both threads CPU (bench/: +20-25 % events/s,
        p99 -30 %).
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
            results = self._insert_events(conn, writes, new_links)
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
        # A deletion of the group's is undone, its id free for another process's next
        # one, whose erasure the cache would then miss: never keep an uncommitted id
        # (unknown: the next group that finds a deletion clears the cache). What the
        # cache forgot stays forgotten.
        self._newest_deletion = None

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
        if newest != self._newest_deletion:  # another process's (this one's: _erase)
            self._forget_erased_links(cursor, newest)
        # Read here, in the transaction that stores the events: a deletion committed
        # before it is seen, and none can commit in between (one writer at a time).
        deleted = {} if newest is None else self._deleted_at(cursor, writes)
        results: list[WriteResult] = []
        for write in writes:
            event = write.event
            if deleted and is_suppressed(
                event, deleted.get(write.account_id, {}), write.suppress_deleted_users
            ):
                # Deduplication first, as everywhere: a stored messageId is a duplicate.
                stored = cursor.execute(_IS_STORED, (write.account_id, event.message_id)).fetchone()
                results.append(None if stored else SUPPRESSED)
                continue
            cursor.execute(
                _INSERT_EVENT,
                (
                    write.account_id,
                    event.message_id,
                    event.type,
                    event.user_id,
                    event.anonymous_id,
                    event.name,
                    event.group_id,
                    event.previous_id,
                    event.timestamp_us,
                    event.received_at_us,
                    write.key_id,
                    event.raw,
                    event.settings,
                    event.user_id or event.anonymous_id,
                ),
            )
            if cursor.rowcount != 1:
                results.append(None)  # a duplicate: its projection was applied before
                continue
            seq = cursor.lastrowid
            assert seq is not None
            results.append(seq)
            projection = project(event)
            if projection.empty:
                continue
            if deleted_ids := self._apply(cursor, write, seq, projection, new_links):
                # The group's later events of those ids are suppressed as they would be
                # in a later group, which reads the deletion.
                at = event.event_time_us
                times = deleted.setdefault(write.account_id, {})
                for id in deleted_ids:
                    times[id] = max(times.get(id, at), at)
        if self.on_insert is not None:
            self.on_insert(writes)
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
    ) -> list[str]:
        """Apply one stored event's projection, inside its transaction. Returns the ids
        a delete's erasure recorded as deleted (none for other events)."""
        account, event = write.account_id, write.event
        for a, b, kind in projection.links:
            if b not in self._known_links.get((account, a), ()):
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
        if projection.erase is None:
            return []
        deleted_ids = self._erase(cursor, account, event, seq)
        erased = set(deleted_ids)
        # Links made earlier in this transaction from the erased ids are gone now:
        # not to be remembered as stored (nor are they in the cache: _erase).
        new_links[:] = [l for l in new_links if l[0] != account or l[1] not in erased]
        return deleted_ids

    def _erase(
        self, cursor: sqlite3.Cursor, account: int, delete: CanonicalEvent, seq: int
    ) -> list[str]:
        """Erase the profile of the delete's user and of every id linked to it, record
        the deletion of each of those ids, which it returns, and leave their events
        stored so far to the eraser (eraser.py: readers leave them out meanwhile)."""
        user_id = delete.user_id
        ids = [row[0] for row in cursor.execute(LINKED_IDS, (account, user_id)).fetchall()]
        any_id = orjson.dumps(ids).decode()
        cursor.execute(
            f"DELETE FROM traits WHERE account_id = ? AND subject_kind = '{USER}' "
            f"AND subject_id {IN_IDS}",
            (account, any_id),
        )
        cursor.execute(
            f"DELETE FROM memberships WHERE account_id = ? AND member_id {IN_IDS}",
            (account, any_id),
        )
        cursor.execute(
            f"DELETE FROM identity_links WHERE account_id = ? AND id {IN_IDS}", (account, any_id)
        )
        deleted_at = delete.event_time_us
        # erased_events: counted by the eraser, as it erases them.
        cursor.execute(
            "INSERT INTO deletions (account_id, user_id, message_id, requested_at_us, "
            "erased_ids, erased_events, deleted_at_us) VALUES (?, ?, ?, ?, ?, 0, ?)",
            (account, user_id, delete.message_id, now_us(), len(ids), deleted_at),
        )
        deletion = cursor.lastrowid
        cursor.executemany(
            "INSERT INTO deleted_ids (account_id, id, deletion_id, deleted_at_us) "
            "VALUES (?, ?, ?, ?)",
            [(account, id, deletion, deleted_at) for id in ids],
        )
        cursor.execute(_LEAVE_TO_ERASER, (account, seq, deletion, any_id))
        # The erased ids' links are gone: forget those (the others stay stored). And
        # this deletion is this process's own: the next group need not clear the cache
        # for it (if this transaction rolls back, _roll_back makes it clear it).
        for id in ids:
            self._known_links.pop((account, id), None)
        self._newest_deletion = deletion
        log.info("deletion %s in account %d: %d ids, its events to erase", seq, account, len(ids))
        return ids

    def _forget_erased_links(self, cursor: sqlite3.Cursor, newest: int | None) -> None:
        """Forget the links of the ids deleted since the newest deletion this process
        knows of, up to `newest`; all of them when it knows of none."""
        known = self._newest_deletion
        if known is None or newest is None or newest < known:
            self._known_links.clear()
        else:
            for account, id in cursor.execute(_DELETED_SINCE, (known, newest)):
                self._known_links.pop((account, id), None)
        self._newest_deletion = newest

    def _remember_link(self, link: tuple[int, str, str]) -> None:
        account, id, other = link
        others = self._known_links.get((account, id))
        if others is None:
            others = self._known_links[account, id] = set()
            if len(self._known_links) > _MAX_KNOWN_IDS:
                self._known_links.popitem(last=False)
        others.add(other)

    # -- reading, retention ------------------------------------------------------------

    async def list_events(self, query: EventQuery) -> list[StoredRecord]:
        def read(conn: sqlite3.Connection) -> list[StoredRecord]:
            where: list[str] = ["account_id = ?", NOT_BEING_ERASED]
            args: list[object] = [query.account_id]
            if query.ids is not None:
                any_id = orjson.dumps(query.ids).decode()
                where.append(OF_IDS)
                args.append(any_id)
            if query.types:
                where.append(f"type {IN_IDS}")
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
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                f"ORDER BY seq {'DESC' if query.newest_first else 'ASC'} LIMIT ?"
            )
            return [stored_record(row) for row in conn.execute(sql, [*args, query.limit])]

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

    async def count_events(self, account_id: int) -> int:
        def read() -> int:
            sql = f"SELECT count(*) FROM events WHERE account_id = ? AND {NOT_BEING_ERASED}"
            return int(self._db().execute(sql, (account_id,)).fetchone()[0])

        return await self._run(read)

    async def get_event_payload(self, account_id: int, message_id: str) -> bytes | None:
        def read() -> bytes | None:
            row = (
                self._db()
                .execute(
                    "SELECT payload FROM events WHERE account_id = ? AND message_id = ? "
                    f"AND {NOT_BEING_ERASED}",
                    (account_id, message_id),
                )
                .fetchone()
            )
            return None if row is None else bytes(row[0])

        return await self._run(read)
