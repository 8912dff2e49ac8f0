from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.pg import TestDatabase
from tests.stack import LiveStack, Stack, start_stack
from tests.test_cli import BRIDGE_READY, Served, free_port, inlet, start, stop


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """One real core + bridge for the session, for synchronous HTTP clients."""
    server = LiveStack(tmp_path_factory.mktemp("live"))
    yield server
    server.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A fresh core + bridge in the test's own loop, on an empty database."""
    running = await start_stack(tmp_path)
    yield running
    await running.stop()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[TestDatabase]:
    """This run's own PostgreSQL database (skips the test without a server)."""
    database = TestDatabase.create()
    yield database
    database.drop()


@pytest.fixture
def pg_dsn(pg_database: TestDatabase) -> str:
    """A DSN on an empty schema of its own, for one test."""
    return pg_database.new_schema()


@pytest.fixture(params=["sqlite", "postgres"])
async def stack_on_each_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Stack]:
    """`stack`, once on SQLite and once on PostgreSQL (where a test module opts in)."""
    database = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    running = await start_stack(tmp_path, database=database)
    yield running
    await running.stop()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """`inlet serve` in tmp_path with a key that may ingest and read (the CLI's tests)."""
    key = inlet(
        "keys", "create", "--account", "acme", "--scope", "ingest,read", cwd=tmp_path
    ).stdout.strip()
    core = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("INLET_SWITCH_REFRESH_S", "0.1")  # the CLI's switch, seen at once
    server, ready = start(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--grpc", core], tmp_path, BRIDGE_READY
    )
    try:
        yield Served(f"http://127.0.0.1:{ready[1]}/segment", core, key, tmp_path)
    finally:
        assert stop(server) == 0
