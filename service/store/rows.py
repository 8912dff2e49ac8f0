"""What both SQL dialects share: the column lists the stores select, the rows they read
turned into records, and the folding of a profile's rows. Pure functions; the
dialects differ only in their placeholders (`?` against `$1`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

from service.store.base import (
    Account,
    GroupRecord,
    KeyRecord,
    ProfileRecord,
    StoredRecord,
    TraitRecord,
)
from service.validation import EVENT_TYPES


class Row(Protocol):
    """A row as the drivers give it: a tuple (sqlite3) or an asyncpg Record."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


EVENT_COLUMNS: Final = """
    seq, message_id, type, user_id, anonymous_id, name, group_id, previous_id, timestamp_us,
    received_at_us, key_id, payload, settings
"""
KEY_COLUMNS: Final = """
    k.key_id, k.account_id, a.name, a.suspended, k.scopes, k.label, k.secret_hash,
    k.created_at_us, k.expires_at_us, k.revoked_at_us, a.suppress_deleted_users
"""
ACCOUNT_COLUMNS: Final = "id, name, suspended, created_at_us, suppress_deleted_users"
# Every type but `delete`, spelled out: with (account_id, subject, type) indexed, erasing a
# user and counting their events search each type, where `type != 'delete'` would read
# every delete event ever stored for the user (one per time they were deleted).
NOT_DELETE_TYPES: Final = tuple(t for t in EVENT_TYPES if t != "delete")
NOT_A_DELETE: Final = "type IN ({})".format(", ".join(f"'{t}'" for t in NOT_DELETE_TYPES))
SELECT_KEYS: Final = f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id"


def key_record(row: Row) -> KeyRecord:
    """A row of KEY_COLUMNS."""
    return KeyRecord(
        key_id=row[0],
        account_id=row[1],
        account_name=row[2],
        account_suspended=bool(row[3]),
        scopes=tuple(row[4].split(",")),
        label=row[5],
        secret_hash=bytes(row[6]),
        created_at_us=row[7],
        expires_at_us=row[8],
        revoked_at_us=row[9],
        account_suppresses_deleted_users=bool(row[10]),
    )


def account_record(row: Row) -> Account:
    """A row of ACCOUNT_COLUMNS."""
    return Account(
        id=row[0],
        name=row[1],
        suspended=bool(row[2]),
        created_at_us=row[3],
        suppress_deleted_users=bool(row[4]),
    )


def stored_record(row: Row) -> StoredRecord:
    """A row of EVENT_COLUMNS."""
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


def list_keys_sql(
    account_id: int | None, include_revoked: bool, param: Callable[[int], str]
) -> tuple[str, list[object]]:
    """ListKeys' statement and arguments: keys of one account or all, live or all, by
    account name then age. `param(n)` is the dialect's n-th placeholder (1-based); `name`
    sorts bytewise (SQLite's order; PostgreSQL needs COLLATE "C", given by the caller)."""
    where: list[str] = []
    args: list[object] = []
    if account_id is not None:
        args.append(account_id)
        where.append(f"k.account_id = {param(len(args))}")
    if not include_revoked:
        where.append("k.revoked_at_us IS NULL")
    sql = SELECT_KEYS
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, args


def newest_traits(rows: Iterable[Row]) -> dict[str, TraitRecord]:
    """One value per key across the linked ids' traits (rows of key, value,
    timestamp_us, message_id): the newest timestamp wins."""
    merged: dict[str, TraitRecord] = {}
    for key, value, timestamp_us, message_id in rows:
        current = merged.get(key)
        if current is None or timestamp_us > current.timestamp_us:
            merged[key] = TraitRecord(bytes(value), timestamp_us, message_id)
    return merged


def profile_record(
    ids: Sequence[str],
    traits: dict[str, TraitRecord],
    groups: Sequence[GroupRecord],
    counts: Iterable[Row],
) -> ProfileRecord | None:
    """The profile of `ids`, given their traits, groups and event counts (rows of type,
    count, oldest and newest timestamp); None when nothing is known of them."""
    per_type: dict[str, int] = {}
    first: int | None = None
    last: int | None = None
    for event_type, count, oldest, newest in counts:
        per_type[event_type] = count
        first = oldest if first is None else min(first, oldest)
        last = newest if last is None else max(last, newest)
    if not (traits or groups or per_type):
        return None
    return ProfileRecord(tuple(ids), traits, tuple(groups), first, last, per_type)
