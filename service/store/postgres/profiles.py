"""Profiles on PostgreSQL: the linked ids' traits, groups and event counts."""

from __future__ import annotations

from typing import Final

from service.projections import GROUP, USER
from service.store.base import (
    GroupRecord,
    ProfileRecord,
)
from service.store.postgres.database import (
    PostgresDatabase,
    pg_text,
)
from service.store.postgres.eraser import BEING_ERASED
from service.store.postgres.projected import LINKED_IDS
from service.store.rows import (
    NOT_A_DELETE,
    newest_traits,
    profile_record,
)

# The linked ids' events per type, with their first and last timestamp.
PROFILE_COUNTS: Final = (
    "SELECT type, count(*), min(timestamp_us), max(timestamp_us) FROM events "
    f"WHERE account_id = $1 AND subject = ANY($2::text[]) AND {NOT_A_DELETE} GROUP BY type"
)


class PostgresProfiles(PostgresDatabase):
    """ProfileStore on PostgreSQL."""

    async def linked_ids(self, account_id: int, id: str) -> tuple[str, ...]:
        async with self._connection() as conn:
            return tuple(row[0] for row in await conn.fetch(LINKED_IDS, account_id, pg_text(id)))

    async def get_profile(self, account_id: int, id: str) -> ProfileRecord | None:
        async with self._snapshot() as conn:
            ids = [row[0] for row in await conn.fetch(LINKED_IDS, account_id, pg_text(id))]
            if await conn.fetchval(BEING_ERASED, account_id, pg_text(id)):
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
            counts = await conn.fetch(PROFILE_COUNTS, account_id, ids)
        return profile_record(ids, traits, groups, counts)
