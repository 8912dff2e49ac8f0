"""Two workers' cores on one SQLite file, as `inlet serve --workers 2` runs them (here in
one process, each on its own port): what one does, the other hears of at once.

The caches and polls are set to a minute, so only the notices (service/worker.py) can
make the second core see the first one's commit, revocation or switch in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from inlet.v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc
from service import keys
from service.config import CoreConfig
from service.server import CoreServer, start_core
from service.store import SqliteStore
from service.worker import Notices, WorkerContext
from tests.service.test_grpc import bearer
from tests.waiting import eventually

SLOW = CoreConfig(
    listen="127.0.0.1:0",
    feed_poll_s=60,
    key_cache_ttl_s=60,
    switch_refresh_s=60,
    sibling_writers=True,
)
TRACK = b'{"type":"track","userId":"u1","event":"E","messageId":"%d"}'


@dataclass
class Pair:
    first: CoreServer
    second: CoreServer
    key: str
    key_id: str
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    database = tmp_path / "inlet.db"
    cores = []
    for index in (1, 2):
        worker = WorkerContext(index=index, count=2, run_dir=tmp_path)
        store = SqliteStore(database, sibling_writers=True)
        cores.append(await start_core(SLOW, store, CollectorRegistry(), worker=worker))
    shared = cores[0].store  # the database both cores use
    account = await shared.ensure_account("acme")
    new = keys.generate_key()
    scopes = ("ingest", "read", "admin", "operator")
    await shared.create_key(account.id, new.key_id, new.secret_hash, scopes)
    channels = tuple(grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") for c in cores)
    try:
        yield Pair(cores[0], cores[1], new.plaintext, new.key_id, channels)  # type: ignore[arg-type]
    finally:
        for channel in channels:
            await channel.close()
        for core in cores:
            await core.stop(grace=0.5)


async def ingest(channel: grpc.aio.Channel, key: str, n: int) -> grpc.StatusCode:
    stub = events_pb2_grpc.EventServiceStub(channel)
    try:
        await stub.Ingest(events_pb2.IngestItem(json=TRACK % n), metadata=bearer(key), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_stream_on_one_worker_wakes_for_a_commit_on_another(pair: Pair) -> None:
    events = events_pb2_grpc.EventServiceStub(pair.channels[1])
    # Any: the stubs type read() as an event or EOF.
    stream: Any = events.Subscribe(events_pb2.SubscribeRequest(), metadata=bearer(pair.key))
    assert await ingest(pair.channels[0], pair.key, 1) == grpc.StatusCode.OK
    first = await asyncio.wait_for(stream.read(), 10)
    assert first.message_id == "1"
    # Now caught up and waiting: the next commit, made by the other core, wakes it.
    assert await ingest(pair.channels[0], pair.key, 2) == grpc.StatusCode.OK
    second = await asyncio.wait_for(stream.read(), 10)  # the poll would take 60 s
    assert second.message_id == "2" and second.sequence > first.sequence
    stream.cancel()


async def test_a_key_revoked_through_one_worker_is_refused_by_the_others_at_once(
    pair: Pair,
) -> None:
    assert await ingest(pair.channels[1], pair.key, 1) == grpc.StatusCode.OK  # now cached
    admin = admin_pb2_grpc.AdminServiceStub(pair.channels[0])
    await admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=pair.key_id), metadata=bearer(pair.key))

    async def refused() -> bool:
        return await ingest(pair.channels[1], pair.key, 2) != grpc.StatusCode.OK

    await eventually(refused, what="the other worker to refuse the key (still cached: 60 s)")


async def test_maintenance_switched_through_one_worker_holds_on_the_others(pair: Pair) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(pair.channels[0])
    await admin.SetMaintenance(admin_pb2.SetMaintenanceRequest(on=True), metadata=bearer(pair.key))

    async def in_maintenance() -> bool:
        return await ingest(pair.channels[1], pair.key, 1) == grpc.StatusCode.UNAVAILABLE

    await eventually(
        in_maintenance, what="the other worker to re-read the switch (not at once: 60 s)"
    )


async def test_notices_reach_every_sibling_and_skip_one_that_is_gone(tmp_path: Path) -> None:
    contexts = [WorkerContext(index=i, count=3, run_dir=tmp_path) for i in (1, 2, 3)]
    first, second = Notices(contexts[0]), Notices(contexts[1])  # worker 3 is not there
    heard: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
    second.listen(
        on_commit=lambda: heard.put_nowait(("commit", None)),
        on_key=lambda key_id: heard.put_nowait(("key", key_id)),
        on_maintenance=lambda: heard.put_nowait(("maintenance", None)),
    )
    first.listen(lambda: None, lambda _: None, lambda: None)
    for _ in range(3):
        first.commit()  # one notice for all the commits of a turn of the loop
    first.key("0123456789abcdef")
    first.key(None)
    first.maintenance()
    got = [await asyncio.wait_for(heard.get(), 5) for _ in range(4)]
    assert got == [
        ("key", "0123456789abcdef"),
        ("key", None),
        ("maintenance", None),
        ("commit", None),
    ]
    assert heard.empty()
    first.close()
    second.close()
