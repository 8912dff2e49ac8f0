"""Accounts, API keys and switches on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from service.store.base import (
    Account,
    KeyRecord,
    StoreError,
    rotated_expiry,
)
from service.store.postgres.database import (
    Conn,
    PostgresDatabase,
    affected,
)
from service.store.rows import (
    ACCOUNT_COLUMNS,
    SELECT_KEYS,
    account_record,
    key_record,
    list_keys_sql,
)
from service.timestamps import now_us

_SELECT_KEY: Final = SELECT_KEYS + " WHERE k.key_id = $1"


class PostgresAccounts(PostgresDatabase):
    """AccountStore and SwitchStore on PostgreSQL."""

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_SELECT_KEY, key_id)
        return None if row is None else key_record(row)

    async def ensure_account(self, name: str) -> Account:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO accounts (name, created_at_us) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                name,
                now_us(),
            )
            row = await conn.fetchrow(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1", name
            )
        assert row is not None  # inserted or already there, in this transaction
        return account_record(row)

    async def create_account(
        self, name: str, suppress_deleted_users: bool = False
    ) -> Account | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO accounts (name, created_at_us, suppress_deleted_users) "
                f"VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING {ACCOUNT_COLUMNS}",
                name,
                now_us(),
                suppress_deleted_users,
            )
        return None if row is None else account_record(row)

    async def get_account(self, name: str) -> Account | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1", name
            )
        return None if row is None else account_record(row)

    async def list_accounts(self) -> list[Account]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f'SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name COLLATE "C"'
            )
        return [account_record(row) for row in rows]

    async def set_account_suspended(self, name: str, suspended: bool) -> Account:
        return await self._set_account(name, "suspended", suspended)

    async def set_account_suppress_deleted_users(self, name: str, on: bool) -> Account:
        return await self._set_account(name, "suppress_deleted_users", on)

    async def _set_account(self, name: str, column: str, value: bool) -> Account:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE accounts SET {column} = $1 WHERE name = $2 RETURNING {ACCOUNT_COLUMNS}",
                value,
                name,
            )
        if row is None:
            raise StoreError(f"no account named {name!r}")
        return account_record(row)

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
            old = None if row is None else key_record(row)
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
        return key_record(row)

    async def list_keys(
        self, account_id: int | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        sql, args = list_keys_sql(account_id, include_revoked, lambda n: f"${n}")
        async with self._connection() as conn:
            rows = await conn.fetch(sql + ' ORDER BY a.name COLLATE "C", k.created_at_us', *args)
        return [key_record(row) for row in rows]

    async def revoke_key(self, key_id: str, account_id: int | None = None) -> KeyRecord | None:
        sql = "UPDATE api_keys SET revoked_at_us = coalesce(revoked_at_us, $1) WHERE key_id = $2"
        args: list[object] = [now_us(), key_id]
        if account_id is not None:
            sql += " AND account_id = $3"
            args.append(account_id)
        async with self._connection() as conn, conn.transaction():
            if affected(await conn.execute(sql, *args)) == 0:
                return None
            row = await conn.fetchrow(_SELECT_KEY, key_id)
        return None if row is None else key_record(row)
