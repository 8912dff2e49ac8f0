"""PostgreSQL for tests: a database of its own per run, a schema of its own per test.

The server comes from INLET_TEST_POSTGRES_DSN (`.ci/test` sets it; on this project's
machines `postgresql://postgres@127.0.0.1:5432/test`). Without it, or without a
server answering there, the PostgreSQL half of the suite is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import os
import threading
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

DSN_VARIABLE = "INLET_TEST_POSTGRES_DSN"
T = TypeVar("T")


def in_thread(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work()` on a fresh event loop in another thread (safe from sync fixtures,
    whatever loop pytest-asyncio has set up in this one)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(work()))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if error:
        raise error[0]
    return result[0]


def with_database(dsn: str, database: str, **query: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(
        parts._replace(path="/" + database, query=urllib.parse.urlencode(query))
    )


class TestDatabase:
    """A database made for this test run (dropped at its end); `new_schema()` gives each
    test an empty schema in it, as a DSN whose connections use only that schema."""

    __test__ = False  # not a test class

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"inlet_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.dsn = with_database(admin_dsn, self.name)
        self._schemas = 0

    @classmethod
    def create(cls) -> TestDatabase:
        admin_dsn = os.environ.get(DSN_VARIABLE)
        if not admin_dsn:
            pytest.skip(f"PostgreSQL half skipped: set {DSN_VARIABLE}=postgresql://... to run it")
        database = cls(admin_dsn)

        async def create() -> None:
            conn = await asyncpg.connect(admin_dsn, timeout=5)
            try:
                await conn.execute(f'CREATE DATABASE "{database.name}"')
            finally:
                await conn.close()

        try:
            in_thread(create)
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.skip(f"PostgreSQL half skipped: no server usable at {DSN_VARIABLE}: {exc}")
        return database

    def drop(self) -> None:
        async def drop() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=5)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()

        in_thread(drop)

    def new_schema(self) -> str:
        self._schemas += 1
        schema = f"t{self._schemas}"

        async def create() -> None:
            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:
                await conn.execute(f"CREATE SCHEMA {schema}")
            finally:
                await conn.close()

        in_thread(create)
        # Unknown DSN parameters are server settings for asyncpg: every connection of the
        # store (pool, listener) then works in this schema alone.
        return with_database(self.admin_dsn, self.name, search_path=schema)


class Proxy:
    """A TCP relay in front of the server: `stop()` is "the database went away" (open
    connections are cut, new ones refused), `start()` is "it came back", same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @classmethod
    def for_dsn(cls, dsn: str) -> Proxy:
        parts = urllib.parse.urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def dsn(self, dsn: str) -> str:
        parts = urllib.parse.urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
