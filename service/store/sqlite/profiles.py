"""Profiles on SQLite: the ids linked to one, and what is known of them (projections.py
writes it as events are stored, events.py)."""

from __future__ import annotations

import sqlite3
from typing import Final

import orjson

from service.projections import GROUP, USER
from service.store.base import GroupRecord, ProfileRecord
from service.store.rows import NOT_A_DELETE, newest_traits, profile_record
from service.store.sqlite.database import SqliteDatabase
from service.store.sqlite.eraser import NOT_BEING_ERASED

#: Matches the values of a JSON array bound as one parameter (a profile's ids).
IN_IDS: Final = "IN (SELECT value FROM json_each(?))"
#: Events of a profile (`subject` in a JSON array of its linked ids).
OF_IDS: Final = f"subject {IN_IDS}"
#: Every id reachable from ?2 through links, following a device's link to its users only
#: from the start (projections.py); UNION (not UNION ALL) stops at cycles. A delete
#: erases these ids (events.py).
LINKED_IDS: Final = """
    WITH RECURSIVE linked(id, start) AS (
        SELECT ?2, 1
        UNION
        SELECT l.other, 0 FROM identity_links l JOIN linked ON l.account_id = ?1 AND l.id = linked.id
        WHERE l.kind != 'user' OR linked.start = 1
    )
    SELECT DISTINCT id FROM linked ORDER BY id
"""
_PROFILE_COUNTS: Final = (
    "SELECT type, count(*), min(timestamp_us), max(timestamp_us) FROM events "
    f"WHERE account_id = ? AND {OF_IDS} AND {NOT_A_DELETE} AND {NOT_BEING_ERASED} GROUP BY type"
)
_USER_TRAITS: Final = (
    "SELECT key, value, timestamp_us, message_id FROM traits "
    f"WHERE account_id = ? AND subject_kind = '{USER}' AND subject_id {IN_IDS}"
)
_GROUPS: Final = (
    "SELECT group_id, max(timestamp_us) FROM memberships "
    f"WHERE account_id = ? AND member_id {IN_IDS} GROUP BY group_id ORDER BY group_id"
)
_GROUP_TRAITS: Final = (
    "SELECT key, value, timestamp_us, message_id FROM traits "
    f"WHERE account_id = ? AND subject_kind = '{GROUP}' AND subject_id = ?"
)


def _linked(conn: sqlite3.Connection, account_id: int, id: str) -> tuple[str, ...]:
    return tuple(row[0] for row in conn.execute(LINKED_IDS, (account_id, id)))


class SqliteProfiles(SqliteDatabase):
    """ProfileStore on SQLite: each look-up is one read transaction."""

    async def linked_ids(self, account_id: int, id: str) -> tuple[str, ...]:
        return await self._read(lambda conn: _linked(conn, account_id, id))

    async def get_profile(self, account_id: int, id: str) -> ProfileRecord | None:
        def read(conn: sqlite3.Connection) -> ProfileRecord | None:
            ids = _linked(conn, account_id, id)
            any_id = orjson.dumps(ids).decode()
            traits = newest_traits(conn.execute(_USER_TRAITS, (account_id, any_id)))
            joined = conn.execute(_GROUPS, (account_id, any_id)).fetchall()
            groups = [
                GroupRecord(
                    group_id,
                    timestamp_us,
                    newest_traits(conn.execute(_GROUP_TRAITS, (account_id, group_id))),
                )
                for group_id, timestamp_us in joined
            ]
            counts = conn.execute(_PROFILE_COUNTS, (account_id, any_id))
            return profile_record(ids, traits, groups, counts)

        return await self._read(read)
