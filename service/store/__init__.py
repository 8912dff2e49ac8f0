"""Durable storage behind the core: accounts, API keys and events.

`open_store(url)` picks the implementation from the database URL. The core and
the `inlet keys` command use the same store classes, so key management works
with or without a running server.
"""

from __future__ import annotations

from pathlib import Path

from service.store.base import Account, EventWrite, KeyRecord, Store, StoreError
from service.store.sqlite import SqliteStore

__all__ = ["Account", "EventWrite", "KeyRecord", "SqliteStore", "Store", "StoreError", "open_store"]


def open_store(database: str, *, durable: bool = True) -> Store:
    """Return an (unopened) store for `database`: a `sqlite:///path` URL or a file path."""
    if database.startswith(("postgres://", "postgresql://")):
        raise StoreError("PostgreSQL is not supported by this build yet; use a SQLite path")
    path = database.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SqliteStore(Path(path), durable=durable)
