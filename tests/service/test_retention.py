"""Retention (service/retention.py): events received longer ago than the window are
deleted, in short transactions, by every core that has one, and by `inlet prune`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from inlet.v1 import events_pb2, events_pb2_grpc
from service.config import CoreConfig
from service.errors import StoreUnavailable
from service.retention import Retention
from service.store import SqliteStore, Store
from service.store.base import EventWrite
from service.validation import canonicalise
from tests.stack import start_stack
from tests.test_cli import inlet
from tests.waiting import eventually

DAY_S = 86_400
NOW_S = 1_780_000_000.0


async def stored_at(
    store: Store, days_ago: float, count: int, prefix: str, now_s: float = NOW_S
) -> None:
    acme = (await store.ensure_account("acme")).id
    received_us = int((now_s - days_ago * DAY_S) * 1_000_000)
    for n in range(count):  # one group each, oldest first
        body = {"type": "track", "messageId": f"{prefix}-{n}", "userId": "u1", "event": "E"}
        event = canonicalise(orjson.dumps(body), received_at_us=received_us)
        await store.write_events([EventWrite(acme, "k1", event)])


async def test_prune_deletes_what_aged_out_in_chunks_and_counts_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "inlet.db")
    await store.open()
    try:
        await stored_at(store, 45, 7, "old")
        await stored_at(store, 1, 3, "new")
        registry = CollectorRegistry()
        pruned = Counter("pruned", "test", registry=registry)
        calls: list[int] = []
        prune_events = store.prune_events

        async def counted(received_before_us: int, limit: int) -> int:
            calls.append(await prune_events(received_before_us, limit))
            return calls[-1]

        store.prune_events = counted  # type: ignore[method-assign]
        retention = Retention(store, 30 * DAY_S, chunk=2, pruned=pruned, clock=lambda: NOW_S)
        assert await retention.prune() == 7
        assert calls == [2, 2, 2, 1]  # short transactions; the short one ends the run
        assert registry.get_sample_value("pruned_total") == 7
        acme = (await store.ensure_account("acme")).id
        assert await store.count_events(acme) == 3
        assert await retention.prune() == 0
    finally:
        await store.close()


def test_a_window_shorter_than_a_day_is_refused() -> None:
    # Segment retries for up to 4 hours: a redelivery must still find the event.
    with pytest.raises(ValueError, match="at least 1 day"):
        Retention(None, 12 * 3600)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1d"):
        CoreConfig(retention_s=12 * 3600)
    assert CoreConfig.from_env({"INLET_RETENTION": "30d"}).retention_s == 30 * DAY_S
    with pytest.raises(ValueError, match="duration"):
        CoreConfig.from_env({"INLET_RETENTION": "a month"})


async def test_an_unavailable_store_is_tried_again_at_the_next_interval() -> None:
    class Flaky:
        calls = 0

        async def prune_events(self, before_us: int, limit: int) -> int:
            self.calls += 1
            if self.calls == 1:
                raise StoreUnavailable()
            return 0

    flaky = Flaky()
    task = asyncio.create_task(Retention(flaky, DAY_S, interval_s=0.01).follow())  # type: ignore[arg-type]
    try:
        await eventually(
            lambda: flaky.calls >= 3, what="follow() to go on after the failure (two more calls)"
        )
        assert not task.done()
    finally:
        task.cancel()


async def test_a_core_with_a_retention_deletes_old_events_while_it_serves(tmp_path: Path) -> None:
    config = CoreConfig(listen="127.0.0.1:0", retention_s=DAY_S, prune_interval_s=0.05)
    stack = await start_stack(tmp_path, core_config=config)
    try:
        async with grpc.aio.insecure_channel(stack.core_target) as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            items = []
            for message_id, days_ago in (("backfilled", 3), ("today", 0)):
                item = events_pb2.IngestItem(
                    json=orjson.dumps(
                        {"type": "track", "messageId": message_id, "userId": "u1", "event": "E"}
                    ),
                )
                item.received_at.FromMicroseconds(int((time.time() - days_ago * DAY_S) * 1e6))
                items.append(item)
            reply = await stub.IngestBatch(
                events_pb2.IngestBatchRequest(items=items),
                metadata=[("authorization", f"Bearer {stack.keys['ingest']}")],
                timeout=5,
            )
            assert [r.outcome for r in reply.results] == [events_pb2.OUTCOME_STORED] * 2
        acme = stack.account_ids["acme"]

        async def pruned() -> bool:
            return await stack.store.count_events(acme) == 1

        await eventually(pruned, what="the old event to be pruned")
        assert await stack.store.get_event_payload(acme, "today") is not None
        registry = stack.core.metrics.registry
        assert registry.get_sample_value("inlet_events_pruned_total") == 1
    finally:
        await stack.stop()


def test_inlet_prune_deletes_now_and_says_how_many(tmp_path: Path) -> None:
    database = tmp_path / "inlet.db"

    async def fill() -> None:
        store = SqliteStore(database)
        await store.open()
        try:
            await stored_at(store, 10, 4, "old", now_s=time.time())
            await stored_at(store, 0, 2, "new", now_s=time.time())
        finally:
            await store.close()

    asyncio.run(fill())
    done = inlet("prune", "--older-than", "7d", "--database", str(database), cwd=tmp_path)
    assert "deleted 4 events" in done.stdout
    short = inlet(
        "prune", "--older-than", "6h", "--database", str(database), cwd=tmp_path, check=False
    )
    assert short.returncode == 2 and "at least 1 day" in short.stderr
