"""Durable storage behind the core: accounts, API keys and events.

`open_store(url)` picks the implementation from the database URL: a
`postgresql://` DSN for PostgreSQL (many cores on one database), anything else is a
SQLite path (the embedded default). The core and the `inlet keys` command use the
same store classes, so key management works with or without a running server.
"""

from __future__ import annotations

from pathlib import Path

from service.store.base import (
    Account,
    AccountStore,
    EventStore,
    EventWrite,
    KeyRecord,
    ProfileStore,
    Store,
    StoreError,
    SwitchStore,
)
from service.store.sqlite import SqliteStore

__all__ = [
    "Account",
    "AccountStore",
    "EventStore",
    "EventWrite",
    "KeyRecord",
    "ProfileStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "SwitchStore",
    "open_store",
]

POSTGRES_SCHEMES = ("postgres://", "postgresql://")


def is_postgres(database: str) -> bool:
    return database.startswith(POSTGRES_SCHEMES)


def open_store(
    database: str,
    *,
    durable: bool = True,
    pool_size: int = 10,
    commits_in_flight: int = 4,
    idle_transaction_timeout_s: float = 60.0,
    timeout_s: float = 5.0,
    sibling_writers: bool = False,
) -> Store:
    """Return an (unopened) store for `database`: a `postgresql://` DSN, a `sqlite:///path`
    URL or a file path. `pool_size`, `commits_in_flight`, `idle_transaction_timeout_s`
    and `timeout_s` apply to PostgreSQL only, `sibling_writers` (other `--workers`
    processes write the file too) to SQLite only."""
    if is_postgres(database):
        # Imported here: SQLite deployments never load the driver.
        from service.store.postgres import PostgresOptions, PostgresStore

        options = PostgresOptions(
            pool_size=pool_size,
            commits_in_flight=commits_in_flight,
            idle_transaction_timeout_s=idle_transaction_timeout_s,
            timeout_s=timeout_s,
            durable=durable,
        )
        return PostgresStore(database, options)
    path = database.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SqliteStore(Path(path), durable=durable, sibling_writers=sibling_writers)
