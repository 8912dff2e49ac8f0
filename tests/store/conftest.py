"""One store fixture, two databases: every test here runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.store import Store, open_store
from service.store.postgres import PostgresOptions, PostgresStore


@dataclass
class Backend:
    """A database for one test; `open()` gives another store instance on it (another core)."""

    kind: str
    url: str
    stores: list[Store] = field(default_factory=list)

    def new(self, url: str | None = None) -> Store:
        # Small pool and short timeouts: a test about a failing database fails fast.
        return open_store(url or self.url, pool_size=4, timeout_s=2.0)

    async def open(self, url: str | None = None) -> Store:
        store = self.new(url)
        await store.open()
        self.stores.append(store)
        return store

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the database behind the store's back (same SQL on both)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.url) as db:
                return [tuple(row) for row in db.execute(sql)]
        conn = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        backend = Backend("sqlite", str(tmp_path / "inlet.db"))
    else:
        backend = Backend("postgres", request.getfixturevalue("pg_dsn"))
    yield backend
    for store in backend.stores:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


@pytest.fixture
async def cores(pg_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two PostgreSQL stores on one database: two cores."""
    options = PostgresOptions(pool_size=4, timeout_s=5.0, listener_check_s=0.2)
    one, two = PostgresStore(pg_dsn, options), PostgresStore(pg_dsn, options)
    await one.open()
    await two.open()
    yield one, two
    await one.close()
    await two.close()
