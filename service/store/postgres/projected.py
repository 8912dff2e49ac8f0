"""The profile tables' writes of an ingest transaction (and of the eraser's rebuild), and
the linked ids' walk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from service.projections import Projection
from service.store.base import (
    EventWrite,
)
from service.store.postgres.database import (
    Conn,
    as_columns,
    pg_text,
)
from service.store.postgres.known_links import LinkKey

_TraitKey = tuple[int, str, str, str]


class Projected:
    """A group's projection rows, merged as applying them one by one would leave them:
    per trait the newest `timestamp` (a tie: the later event), per membership the newest
    timestamp, each link once."""

    def __init__(self) -> None:
        self.traits: dict[_TraitKey, tuple[bytes, int, str]] = {}
        self.members: dict[tuple[int, str, str], int] = {}
        self.links: dict[LinkKey, str] = {}
        #: Every link written so far (to remember once committed: known_links.py).
        self.written_links: list[LinkKey] = []

    def add(
        self,
        write: EventWrite,
        projection: Projection,
        skip_link: Callable[[LinkKey], bool] | None = None,
    ) -> None:
        """Merge one event's projection; its links for which `skip_link` says so are left
        out (known to be stored)."""
        account, event = write.account_id, write.event
        message_id = pg_text(event.message_id) or ""
        for a, b, kind in projection.links:
            link = (account, pg_text(a) or "", pg_text(b) or "")
            if skip_link is None or not skip_link(link):
                self.links.setdefault(link, kind)
        for t in projection.traits:
            key = (account, t.subject_kind, pg_text(t.subject_id) or "", pg_text(t.key) or "")
            held = self.traits.get(key)
            if held is None or event.timestamp_us >= held[1]:
                self.traits[key] = (t.value, event.timestamp_us, message_id)
        if projection.membership is not None:
            member, group = projection.membership
            key3 = (account, pg_text(member) or "", pg_text(group) or "")
            self.members[key3] = max(self.members.get(key3, event.timestamp_us), event.timestamp_us)

    # Rows go in key order: transactions of several cores upserting the same users' rows
    # then lock them in one order and wait for each other, where any other order could
    # deadlock them (the server notices after deadlock_timeout, 1 s, and aborts one).

    async def write_links(self, conn: Conn) -> None:
        if self.links:
            rows = [(*key, kind) for key, kind in sorted(self.links.items())]
            await conn.execute(_LINKS, *as_columns(rows))
            self.written_links += self.links
            self.links.clear()

    async def write_traits(self, conn: Conn) -> None:
        if self.traits:
            rows = [(*key, *held) for key, held in sorted(self.traits.items())]
            await conn.execute(_UPSERT_TRAITS, *as_columns(rows))
            self.traits.clear()

    async def write_memberships(self, conn: Conn) -> None:
        if self.members:
            rows = [(*key, ts) for key, ts in sorted(self.members.items())]
            await conn.execute(_UPSERT_MEMBERSHIPS, *as_columns(rows))
            self.members.clear()

    async def write(self, conn: Conn) -> None:
        """Every table, in the one order all writers follow: links, traits, memberships."""
        await self.write_links(conn)
        await self.write_traits(conn)
        await self.write_memberships(conn)


# The projections of a group, one statement per table (rows deduplicated beforehand,
# see Projected: ON CONFLICT DO UPDATE may not touch one row twice in a statement).
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
# (not UNION ALL) stops at cycles. COLLATE "C": byte order, as SQLite sorts. Each step
# searches the key per id found, lateral (OFFSET 0 keeps the planner from flattening
# it into a join): as a join, it hashes every link of the account.
LINKED_CTE: Final = """
    linked(id, start) AS (
        SELECT $2::text, true
        UNION
        SELECT l.other, false FROM linked,
        LATERAL (SELECT l.other FROM identity_links l
                 WHERE l.account_id = $1 AND l.id = linked.id
                   AND (l.kind != 'user' OR linked.start)
                 OFFSET 0) AS l
    )
"""


LINKED_IDS: Final = f"""
    WITH RECURSIVE {LINKED_CTE}
    SELECT id FROM (SELECT DISTINCT id FROM linked) ids ORDER BY id COLLATE "C"
"""
