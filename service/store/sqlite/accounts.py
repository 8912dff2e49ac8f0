"""Accounts, API keys (rotation included) and switches on SQLite: small writes, each one
transaction on the writer thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from service.errors import StoreUnavailable
from service.store.base import Account, KeyRecord, StoreError, rotated_expiry
from service.store.rows import (
    ACCOUNT_COLUMNS,
    SELECT_KEYS,
    account_record,
    key_record,
    list_keys_sql,
)
from service.store.sqlite.database import SqliteDatabase
from service.timestamps import now_us

_SELECT_ACCOUNT: Final = f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?"
_SELECT_KEY: Final = f"{SELECT_KEYS} WHERE k.key_id = ?"


class SqliteAccounts(SqliteDatabase):
    """AccountStore and SwitchStore on SQLite."""

    # -- accounts ----------------------------------------------------------------------

    async def ensure_account(self, name: str) -> Account:
        def work(conn: sqlite3.Connection) -> Account:
            conn.execute(
                "INSERT INTO accounts (name, created_at_us) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, now_us()),
            )
            row = conn.execute(_SELECT_ACCOUNT, (name,)).fetchone()
            return account_record(row)

        return await self._run(self._transaction, work)

    async def create_account(
        self, name: str, suppress_deleted_users: bool = False
    ) -> Account | None:
        def work(conn: sqlite3.Connection) -> Account | None:
            inserted = conn.execute(
                "INSERT INTO accounts (name, created_at_us, suppress_deleted_users) "
                "VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, now_us(), suppress_deleted_users),
            ).rowcount
            if not inserted:
                return None
            return account_record(conn.execute(_SELECT_ACCOUNT, (name,)).fetchone())

        return await self._run(self._transaction, work)

    async def get_account(self, name: str) -> Account | None:
        def read() -> Account | None:
            row = self._db().execute(_SELECT_ACCOUNT, (name,)).fetchone()
            return None if row is None else account_record(row)

        return await self._run(read)

    async def list_accounts(self) -> list[Account]:
        sql = f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name"
        return await self._read(lambda conn: [account_record(r) for r in conn.execute(sql)])

    async def set_account_suspended(self, name: str, suspended: bool) -> Account:
        return await self._set_account(name, "suspended", suspended)

    async def set_account_suppress_deleted_users(self, name: str, on: bool) -> Account:
        return await self._set_account(name, "suppress_deleted_users", on)

    async def _set_account(self, name: str, column: str, value: bool) -> Account:
        def work(conn: sqlite3.Connection) -> Account:
            conn.execute(f"UPDATE accounts SET {column} = ? WHERE name = ?", (value, name))
            row = conn.execute(_SELECT_ACCOUNT, (name,)).fetchone()
            if row is None:
                raise StoreError(f"no account named {name!r}")
            return account_record(row)

        return await self._run(self._transaction, work)

    # -- switches ----------------------------------------------------------------------

    async def get_switch(self, name: str) -> tuple[str, int] | None:
        def read(conn: sqlite3.Connection) -> tuple[str, int] | None:
            sql = "SELECT value, changed_at_us FROM switches WHERE name = ?"
            row = conn.execute(sql, (name,)).fetchone()
            return None if row is None else (row[0], row[1])

        return await self._read(read)

    async def set_switch(self, name: str, value: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            now = now_us()
            conn.execute(
                "INSERT INTO switches (name, value, changed_at_us) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "changed_at_us = excluded.changed_at_us",
                (name, value, now),
            )
            return now

        return await self._run(self._transaction, work)

    # -- keys --------------------------------------------------------------------------

    async def get_key(self, key_id: str) -> KeyRecord | None:
        def read() -> KeyRecord | None:
            try:
                return self._select_key(self._db(), key_id)
            except sqlite3.OperationalError as exc:  # on the ingest path: 503, retry later
                raise StoreUnavailable() from exc

        return await self._run(read)

    async def create_key(
        self,
        account_id: int,
        key_id: str,
        secret_hash: bytes,
        scopes: Sequence[str],
        label: str = "",
        expires_at_us: int | None = None,
    ) -> KeyRecord:
        def work(conn: sqlite3.Connection) -> KeyRecord:
            return self._insert_key(
                conn, account_id, key_id, secret_hash, scopes, label, expires_at_us
            )

        return await self._run(self._transaction, work)

    async def rotate_key(
        self,
        key_id: str,
        account_id: int,
        new_key_id: str,
        new_secret_hash: bytes,
        old_valid_until_us: int,
    ) -> KeyRecord | None:
        def work(conn: sqlite3.Connection) -> KeyRecord | None:
            old = self._select_key(conn, key_id)
            until = rotated_expiry(old, account_id, old_valid_until_us, now_us())
            if old is None or until is None:
                return None
            conn.execute("UPDATE api_keys SET expires_at_us = ? WHERE key_id = ?", (until, key_id))
            return self._insert_key(
                conn,
                account_id,
                new_key_id,
                new_secret_hash,
                old.scopes,
                old.label,
                old.expires_at_us,
            )

        return await self._run(self._transaction, work)

    @classmethod
    def _insert_key(
        cls,
        conn: sqlite3.Connection,
        account_id: int,
        key_id: str,
        secret_hash: bytes,
        scopes: Sequence[str],
        label: str,
        expires_at_us: int | None,
    ) -> KeyRecord:
        conn.execute(
            "INSERT INTO api_keys (key_id, account_id, secret_hash, scopes, label, "
            "created_at_us, expires_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key_id, account_id, secret_hash, ",".join(scopes), label, now_us(), expires_at_us),
        )
        record = cls._select_key(conn, key_id)
        assert record is not None  # inserted just above, in this transaction
        return record

    @staticmethod
    def _select_key(conn: sqlite3.Connection, key_id: str) -> KeyRecord | None:
        row = conn.execute(_SELECT_KEY, (key_id,)).fetchone()
        return None if row is None else key_record(row)

    async def list_keys(
        self, account_id: int | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        def read() -> list[KeyRecord]:
            sql, args = list_keys_sql(account_id, include_revoked, param=lambda n: "?")
            sql += " ORDER BY a.name, k.created_at_us"
            return [key_record(row) for row in self._db().execute(sql, args)]

        return await self._run(read)

    async def revoke_key(self, key_id: str, account_id: int | None = None) -> KeyRecord | None:
        def work(conn: sqlite3.Connection) -> KeyRecord | None:
            sql = "UPDATE api_keys SET revoked_at_us = coalesce(revoked_at_us, ?) WHERE key_id = ?"
            args: list[object] = [now_us(), key_id]
            if account_id is not None:
                sql += " AND account_id = ?"
                args.append(account_id)
            if conn.execute(sql, args).rowcount == 0:
                return None
            return self._select_key(conn, key_id)

        return await self._run(self._transaction, work)
