"""Scale-out as docs/scaling.md runs it: two `inlet serve core` and two
`inlet serve bridge` processes on one PostgreSQL database.

Concurrent load sends every event to both bridges at once (Segment redelivering to
another instance behind the load balancer); then every acknowledged event is stored
exactly once, and a subscriber on core 2 saw each one, once, in sequence order,
whichever core stored it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import asyncpg
import grpc

from inlet.v1 import events_pb2, events_pb2_grpc
from tests.stack import basic
from tests.test_cli import free_port
from tests.test_faults import process
from tests.waiting import eventually

EVENTS = 400


def inlet(*args: str, cwd: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "inlet_app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


async def test_two_cores_two_bridges_one_database(tmp_path: Path, pg_dsn: str) -> None:
    assert "migrated from version 0" in inlet("migrate", "--database", pg_dsn, cwd=tmp_path)
    assert "up to date" in inlet("migrate", "--database", pg_dsn, cwd=tmp_path)
    key = inlet(
        "keys",
        "create",
        "--account",
        "acme",
        "--scope",
        "ingest,read",
        "--database",
        pg_dsn,
        cwd=tmp_path,
    )
    env = {"INLET_DATABASE_URL": pg_dsn, "INLET_PG_POOL_SIZE": "4"}
    cores = [free_port(), free_port()]
    bridges = [free_port(), free_port()]
    with ExitStack() as running:
        for port in cores:
            running.enter_context(
                process(
                    ["serve", "core", "--grpc", f"127.0.0.1:{port}"],
                    tmp_path,
                    "core listening",
                    **env,
                )
            )
        for port, core in zip(bridges, cores, strict=True):
            running.enter_context(
                process(
                    [
                        "serve",
                        "bridge",
                        "--core",
                        f"127.0.0.1:{core}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    tmp_path,
                    "bridge listening",
                )
            )

        async with grpc.aio.insecure_channel(f"127.0.0.1:{cores[1]}") as channel:
            stream = events_pb2_grpc.EventServiceStub(channel).Subscribe(
                events_pb2.SubscribeRequest(after_sequence=0),
                metadata=[("authorization", f"Bearer {key}")],
            )
            seen: list[tuple[int, str]] = []

            async def subscribe() -> None:
                async for event in stream:
                    seen.append((event.sequence, event.message_id))

            subscriber = asyncio.create_task(subscribe())
            acknowledged, statuses = await deliver_twice(bridges, key)
            try:
                await eventually(
                    lambda: not {m for _, m in seen} < acknowledged,
                    what=lambda: (
                        f"the subscriber on core 2 to see all {len(acknowledged)} "
                        f"acknowledged events (it saw {len(seen)})"
                    ),
                    timeout=30,
                )
            finally:
                stream.cancel()
                await asyncio.gather(subscriber, return_exceptions=True)

    assert statuses == {200: 2 * EVENTS}, statuses  # nothing failed: no reason to
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT message_id, count(*) FROM events GROUP BY message_id")
    finally:
        await conn.close()
    stored = {row[0]: row[1] for row in rows}
    assert set(stored) == acknowledged and set(stored.values()) == {1}  # exactly once
    sequences = [s for s, _ in seen]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert sorted(m for _, m in seen) == sorted(acknowledged)  # each once, none missing


async def deliver_twice(bridges: list[int], key: str) -> tuple[set[str], dict[int, int]]:
    """POST each event to both bridges at once, 16 events in flight; what got a 2xx."""
    headers = {"Authorization": basic(key), "Content-Type": "application/json"}
    acknowledged: set[str] = set()
    statuses: dict[int, int] = {}
    stored_answers = 0
    todo = list(range(EVENTS))

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal stored_answers
        while todo:
            n = todo.pop()
            event = {
                "type": "track",
                "userId": f"u{n % 7}",
                "event": "Load",
                "messageId": f"scale-{n}",
            }

            async def post(port: int, event: Mapping[str, object] = event) -> tuple[int, bool]:
                async with session.post(
                    f"http://127.0.0.1:{port}/segment", data=json.dumps(event), headers=headers
                ) as reply:
                    body = await reply.json()
                    return reply.status, not body.get("duplicate", False)

            for status, fresh in await asyncio.gather(*(post(port) for port in bridges)):
                statuses[status] = statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    acknowledged.add(str(event["messageId"]))
                    stored_answers += fresh

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        await asyncio.gather(*(sender(session) for _ in range(16)))
    # Each event was "stored" for exactly one of its two deliveries, "duplicate" for the other.
    assert stored_answers == len(acknowledged)
    return acknowledged, statuses
