"""Prometheus metrics: what an operator graphs and alerts on, and what must never be in them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from http_bridge.config import BridgeConfig
from service.config import CoreConfig
from service.server import start_core
from service.store import SqliteStore
from tests.stack import Stack, basic, start_stack
from tests.waiting import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Stack]:
    """Core and bridge on one registry, as in `inlet serve`."""
    stack = await start_stack(tmp_path, registry=CollectorRegistry())
    yield stack
    await stack.stop()


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[str, Samples]:
    async with session.get(url) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = await reply.text()
    return text, parse(text)


async def test_requests_events_latencies_and_batches_are_counted(shared: Stack) -> None:
    auth = {"Authorization": basic(shared.keys["ingest"])}
    track = {"type": "track", "userId": "u1", "event": "Paid", "messageId": "m-1"}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # stored, then duplicate
            async with session.post(shared.url + "/segment", json=track, headers=auth) as reply:
                assert reply.status == 200
        bad = {"type": "track", "userId": "u1"}  # no `event`
        async with session.post(shared.url + "/segment", json=bad, headers=auth) as reply:
            assert reply.status == 400
        wrong = {"Authorization": basic("inlet_0123456789abcdef_" + "x" * 43)}
        async with session.post(shared.url + "/segment", json=track, headers=wrong) as reply:
            assert reply.status == 401
        _, samples = await scrape(session, shared.url + "/metrics")

    requests = "inlet_http_requests_total"
    assert value(samples, requests, route="/segment", status="200") == 2
    assert value(samples, requests, route="/segment", status="400") == 1
    assert value(samples, requests, route="/segment", status="401") == 1
    events = "inlet_events_total"
    assert value(samples, events, type="track", outcome="stored", reason="") == 1
    assert value(samples, events, type="track", outcome="duplicate", reason="") == 1
    assert value(samples, events, type="unknown", outcome="rejected", reason="missing_field") == 1
    assert value(samples, events, type="unknown", outcome="rejected", reason="invalid_api_key") == 1
    assert value(samples, "inlet_http_request_duration_seconds_count", route="/segment") == 4
    assert value(samples, "inlet_core_call_duration_seconds_count", result="ok") == 4
    assert value(samples, "inlet_core_call_events_sum") == 4
    assert value(samples, "inlet_store_write_duration_seconds_count") == 2  # two valid events
    assert (
        value(
            samples,
            "inlet_grpc_requests_total",
            method="/inlet.v1.EventService/IngestBatch",
            code="OK",
        )
        == 4
    )
    # The scrape itself is in flight while it is rendered; nothing else is.
    assert value(samples, "inlet_http_requests_in_flight") == 1
    assert value(samples, "inlet_bridge_queued_requests") == 0
    assert value(samples, "inlet_core_events_in_flight") == 0


async def test_error_answers_are_counted_by_code_on_every_route(shared: Stack) -> None:
    auth = {"Authorization": basic(shared.keys["ingest"])}
    bad = {"type": "track", "userId": "u1"}  # no `event`
    async with aiohttp.ClientSession() as session:
        async with session.post(shared.url + "/segment", json=bad, headers=auth) as reply:
            assert reply.status == 400
        async with session.post(shared.url + "/v1/track", json=bad, headers=auth) as reply:
            assert (reply.status, (await reply.json())["code"]) == (400, "missing_field")
        async with session.post(shared.url + "/segment", json=bad) as reply:
            assert reply.status == 401
        _, samples = await scrape(session, shared.url + "/metrics")
    assert value(samples, "inlet_http_errors_total", code="missing_field") == 2
    assert value(samples, "inlet_http_errors_total", code="missing_authorization") == 1


async def counter_rises_after(
    shared: Stack, bodies: list[dict[str, str]], counter: str, what: str
) -> Samples:
    """POST `bodies` to /segment (each stored), then scrape until `counter` has grown:
    the samples of that scrape."""
    auth = {"Authorization": basic(shared.keys["ingest"])}
    async with aiohttp.ClientSession() as session:
        _, samples = await scrape(session, shared.url + "/metrics")
        before = value(samples, counter)
        for body in bodies:
            async with session.post(shared.url + "/segment", json=body, headers=auth) as reply:
                assert reply.status == 200

        async def risen() -> Samples | None:
            _, samples = await scrape(session, shared.url + "/metrics")
            return samples if value(samples, counter) > before else None

        return await eventually(risen, what=what)


async def test_sqlite_checkpoints_are_exported(shared: Stack) -> None:
    """Operators watch the write-ahead log: a commit is followed by a checkpoint."""
    track = {"type": "track", "userId": "u1", "event": "Paid", "messageId": "m-ckpt"}
    samples = await counter_rises_after(
        shared, [track], "inlet_sqlite_checkpoints_total", "a checkpoint after the commit"
    )
    for name in (
        "inlet_sqlite_checkpoint_failures_total",
        "inlet_sqlite_checkpoint_catch_ups_total",
        "inlet_sqlite_wal_pages",
    ):
        assert (name, ()) in samples
    assert value(samples, "inlet_sqlite_checkpoint_failures_total") == 0
    assert value(samples, "inlet_sqlite_checkpoint_thread_up") == 1


async def test_sqlite_erasures_are_exported(shared: Stack) -> None:
    """A deleted user's events stay in the file until the eraser has run: operators see
    it run, and alert on its failures."""
    track = {"type": "track", "userId": "u-erased", "event": "Paid", "messageId": "m-kept"}
    delete = {"type": "delete", "userId": "u-erased", "messageId": "m-erase"}
    samples = await counter_rises_after(
        shared, [track, delete], "inlet_sqlite_deletions_erased_total", "the deletion erased"
    )
    assert value(samples, "inlet_sqlite_erasure_failures_total") == 0


async def test_route_labels_stay_bounded_under_a_scan_of_random_paths(shared: Stack) -> None:
    async with aiohttp.ClientSession() as session:

        async def probe(index: int) -> None:
            path = f"/{uuid.uuid4().hex}/{index}?q={uuid.uuid4().hex}"
            async with session.request(("GET", "POST")[index % 2], shared.url + path) as reply:
                assert reply.status == 404
            async with session.get(shared.url + "/segment") as reply:  # 405, known path
                assert reply.status == 405

        await asyncio.gather(*(probe(i) for i in range(100)))
        text, samples = await scrape(session, shared.url + "/metrics")

    routes = {dict(labels).get("route") for (name, labels) in samples if "inlet_http" in name}
    assert routes <= {None, "/segment", "/healthz", "/readyz", "/metrics", "unmatched"}
    assert value(samples, "inlet_http_requests_total", route="unmatched", status="404") == 100
    assert value(samples, "inlet_http_requests_total", route="unmatched", status="405") == 100
    assert "/0" not in text and "q=" not in text


async def test_no_key_user_or_event_data_in_any_label(shared: Stack) -> None:
    key = shared.keys["ingest"]
    event = {
        "type": "identify",
        "userId": "user-7f3a9c",
        "messageId": "msg-5e1d2b",
        "traits": {"email": "peter@example.com"},
    }
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": basic(key), "X-Request-Id": "req-4b8e0f"}
        async with session.post(shared.url + "/segment", json=event, headers=headers) as reply:
            assert reply.status == 200
        text, _ = await scrape(session, shared.url + "/metrics")
    account_id = str(shared.account_ids["acme"])
    for secret in (
        key,
        key.split("_")[1],
        key.split("_")[2],
        "user-7f3a9c",
        "msg-5e1d2b",
        "peter@example.com",
        "req-4b8e0f",
        'account="' + account_id,
    ):
        assert secret not in text


async def test_the_core_serves_its_metrics_on_its_own_port(tmp_path: Path) -> None:
    config = CoreConfig(listen="127.0.0.1:0", metrics_port=0)
    core = await start_core(config, SqliteStore(tmp_path / "inlet.db"))
    try:
        assert core.metrics_port
        async with aiohttp.ClientSession() as session:
            _, samples = await scrape(session, f"http://127.0.0.1:{core.metrics_port}/metrics")
        assert ("inlet_core_events_in_flight", ()) in samples
        assert value(samples, "inlet_subscribe_streams") == 0
    finally:
        await core.stop(grace=0)


async def test_a_metrics_token_keeps_metrics_from_anyone_without_it(tmp_path: Path) -> None:
    """INLET_METRICS_TOKEN: the bridge's port faces the internet (Segment must reach it)."""
    config = BridgeConfig.from_env(
        {"INLET_METRICS_TOKEN": "s3cret-scrape"}, host="127.0.0.1", port=0
    )
    stack = await start_stack(tmp_path, bridge_config=config, registry=CollectorRegistry())
    try:
        async with aiohttp.ClientSession() as session:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "s3cret-scrape"},
                {"Authorization": basic(stack.keys["admin"])},
            ):
                async with session.get(stack.url + "/metrics", headers=headers) as reply:
                    assert reply.status == 401
                    assert (await reply.json())["code"] == "invalid_metrics_token"
                    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            headers = {"Authorization": "Bearer s3cret-scrape"}
            async with session.get(stack.url + "/metrics", headers=headers) as reply:
                assert reply.status == 200
                assert "inlet_http_requests_total" in await reply.text()
    finally:
        await stack.stop()


async def test_the_core_metrics_port_takes_the_same_token(tmp_path: Path) -> None:
    config = CoreConfig(listen="127.0.0.1:0", metrics_port=0, metrics_token="core-scrape")
    core = await start_core(config, SqliteStore(tmp_path / "inlet.db"))
    try:
        url = f"http://127.0.0.1:{core.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Authorization": "Bearer nope"}) as reply:
                assert reply.status == 401
                assert (await reply.json())["code"] == "invalid_metrics_token"
            headers = {"Authorization": "Bearer core-scrape"}
            async with session.get(url, headers=headers) as reply:
                assert reply.status == 200
                assert "inlet_core_events_in_flight" in await reply.text()
    finally:
        await core.stop(grace=0)


async def test_events_of_one_call_are_all_counted(shared: Stack) -> None:
    """An SDK batch is one call to the core: each of its events counts once."""
    auth = {"Authorization": basic(shared.keys["ingest"])}
    batch = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "E", "messageId": f"b-{n}"}
            for n in (1, 2, 3, 1)  # the last a redelivery of the first
        ]
        + [{"type": "identify", "userId": "u1", "messageId": "b-i", "traits": {}}]
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(shared.url + "/v1/batch", json=batch, headers=auth) as reply:
            assert reply.status == 200
        _, samples = await scrape(session, shared.url + "/metrics")
    events = "inlet_events_total"
    assert value(samples, events, type="track", outcome="stored", reason="") == 3
    assert value(samples, events, type="track", outcome="duplicate", reason="") == 1
    assert value(samples, events, type="identify", outcome="stored", reason="") == 1
    assert value(samples, "inlet_core_call_duration_seconds_count", result="ok") == 1
