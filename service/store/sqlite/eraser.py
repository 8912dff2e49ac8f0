"""Erasing the events that deletions left to erase, in the background.

A `delete` erases its user's profile (traits, memberships, links: a few rows, on pages
of their own) in its own transaction, and records in `erasing` which events it leaves:
the ids' events stored before it. Erasing those is what a delete costs most (each
event's row and index entries lie on pages of their own, and each such page goes to the
log, then to the checkpoint: docs/postgres-findings.md), and erased together, the
deletes of a moment share many of those pages. So the eraser lets the deletes of
`gather_s` after the first join it and erases them together, between ingest groups, in
transactions of at most `max_events` events: SQLite has one writer, and ingest waits
for each (a user with a long history is erased over several, with ingest in between).
Until then readers leave those events out (`NOT_BEING_ERASED`), and the deleted ids'
later events are stored or suppressed as with an erasure done at once
(service/suppression.py).

Under `inlet serve --workers` every worker runs one: whichever comes first erases what
is recorded (the write lock orders them, and the second finds nothing). A worker that
stopped during the gather, or died, leaves its records to the others' poll or to the
next start.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple

import orjson

from service.store.eraser_task import EraserTask
from service.store.rows import NOT_A_DELETE

log = logging.getLogger(__name__)

#: What readers leave out while deletions wait to be erased: what the eraser will erase.
NOT_BEING_ERASED: Final = f"""
    NOT (events.{NOT_A_DELETE} AND EXISTS (
        SELECT 1 FROM erasing x
        WHERE x.account_id = events.account_id AND x.id = events.subject
          AND events.seq < x.before_seq
    ))
"""

# Each statement below is one step of SQLite's, so the writer thread takes the GIL back
# a few times per erasure, not once per row: under load the event loop holds it, and
# each take may wait for its switch interval.

# Every record of `erasing`, with how many events it still leaves, in one row:
# [[account, id, before_seq, deletion, count], ...].
_RECORDS: Final = f"""
    SELECT json_group_array(json_array(account_id, id, before_seq, deletion_id, (
        SELECT count(*) FROM events e
        WHERE e.account_id = x.account_id AND e.subject = x.id
          AND e.{NOT_A_DELETE} AND e.seq < x.before_seq
    ))) FROM erasing x
"""
# The events of the records ?1 ([[account, id, before_seq], ...]): each id's stored before
# its delete (through the (account, subject, type) index: delete events, the record of
# each deletion, stay), at most ?2 of them. CROSS JOIN keeps the records the outer loop.
_ERASE: Final = f"""
    DELETE FROM events WHERE seq IN (
        SELECT e.seq FROM json_each(?1) r
        CROSS JOIN events e ON e.account_id = json_extract(r.value, '$[0]')
            AND e.subject = json_extract(r.value, '$[1]')
            AND e.{NOT_A_DELETE} AND e.seq < json_extract(r.value, '$[2]')
        LIMIT ?2
    )
"""
_FORGET: Final = """
    DELETE FROM erasing WHERE (account_id, id, before_seq) IN (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
               json_extract(value, '$[2]')
        FROM json_each(?)
    )
"""
# ?1: {"deletion": events erased, ...}
_ADD_COUNTS: Final = """
    UPDATE deletions SET erased_events = erased_events + json_extract(?1, '$."' || id || '"')
    WHERE id IN (SELECT CAST(key AS INTEGER) FROM json_each(?1))
"""
_TOTALS: Final = """
    SELECT json_group_array(json_array(id, erased_events)) FROM deletions
    WHERE id IN (SELECT value FROM json_each(?))
"""


class Erased(NamedTuple):
    #: The deletions whose last events this transaction erased, each as (the delete's
    #: sequence number, its account, how many events it erased in all).
    deletions: list[tuple[int, int, int]]
    #: Whether records are left for another transaction.
    more: bool


def erase_recorded(conn: sqlite3.Connection, max_events: int) -> Erased:
    """Inside a write transaction: erase the events `erasing` records, oldest deletion
    first, at most `max_events` of them (ingest waits for this transaction: a user with
    a long history is erased over several); add the counts to the deletions' audit rows
    and forget the records done."""
    records = orjson.loads(conn.execute(_RECORDS).fetchone()[0])
    if not records:
        return Erased([], more=False)
    records.sort(key=lambda record: (record[3], record[1]))
    chosen: list[list[Any]] = []
    total = 0
    for record in records:
        if chosen and total + record[4] > max_events:
            break
        chosen.append(record)
        total += record[4]
    keys = orjson.dumps([record[:3] for record in chosen]).decode()
    erased = conn.execute(_ERASE, (keys, max_events)).rowcount
    counts: dict[int, int] = {}
    partial = total > max_events  # the first record alone, too long for one transaction
    if partial:
        counts[chosen[0][3]] = erased
    else:
        for record in chosen:
            counts[record[3]] = counts.get(record[3], 0) + record[4]
        conn.execute(_FORGET, (keys,))
    conn.execute(_ADD_COUNTS, (orjson.dumps(counts, option=orjson.OPT_NON_STR_KEYS).decode(),))
    left = {record[3] for record in records[len(chosen) :]}
    if partial:
        left.add(chosen[0][3])
    done = [deletion for deletion in counts if deletion not in left]
    totals = orjson.loads(conn.execute(_TOTALS, (orjson.dumps(done).decode(),)).fetchone()[0])
    # Named as ingest logged them: the delete's sequence number (before_seq) and account.
    delete = {record[3]: (record[2], record[0]) for record in chosen}
    return Erased([(*delete[d], n) for d, n in totals], more=partial or len(chosen) < len(records))


class Eraser(EraserTask):
    """Runs `erase_recorded` in write transactions of its own (`erase`, the store's)
    `gather_s` after a delete commits (`kick`), and every `poll_s` if records are left
    (`has_records`, a read): a worker that died, a failed erasure."""

    def __init__(
        self,
        erase: Callable[[], Awaitable[Erased]],
        has_records: Callable[[], Awaitable[bool]],
        *,
        gather_s: float,
        poll_s: float,
        stop_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(log, name="inlet-sqlite-eraser", stop_timeout_s=stop_timeout_s)
        self._erase = erase
        self._has_records = has_records
        self._gather_s = gather_s
        self._poll_s = poll_s
        #: Erasure transactions run.
        self.passes = 0

    async def _last_pass(self) -> None:
        await self.erase_now()

    async def erase_now(self) -> int:
        """Erase what is recorded, now, in as many transactions as it takes; the number of
        deletions erased."""
        self._wake.clear()
        erased = 0
        # A read first: no write transaction (nor, under --workers, the siblings' file
        # lock) when another worker has erased it all, or the deletes left nothing.
        more = await self._has_records()
        while more:
            deletions, more = await self._erase()
            self.passes += 1
            erased += len(deletions)
            self.erased += len(deletions)
            for seq, account, count in deletions:  # committed
                log.info("deletion %d in account %d erased: %d events", seq, account, count)
        return erased

    async def _run(self) -> None:
        kicked = False  # at the start: what a stopped or killed process left, at once
        while True:
            if kicked:  # a delete committed: let the ones right behind it join its erasure
                await asyncio.sleep(self._gather_s)
            try:
                if kicked or await self._has_records():
                    await self.erase_now()
            except Exception as exc:  # noqa: BLE001 - retried at the next kick or poll
                self.failed("erasing deletions failed (will retry)", exc)
            try:
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
                kicked = True
            except TimeoutError:
                kicked = False  # the poll: records another process left, a failed erasure
