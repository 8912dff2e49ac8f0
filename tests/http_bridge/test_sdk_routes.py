"""The SDK routes (`/v1/*`) over real HTTP against a real core and store."""

from __future__ import annotations

import gzip
import json
import sqlite3
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from http_bridge.config import BridgeConfig
from tests.exact_values import EXACT_TRAITS
from tests.stack import Stack, basic, start_stack

TRACK = {"userId": "u1", "event": "Order Completed", "messageId": "m-1"}


async def post(
    stack: Stack,
    path: str,
    body: Any = None,
    *,
    key: str | None = "ingest",
    headers: dict[str, str] | None = None,
    data: Any = None,
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = basic(stack.keys.get(key, key))
    sent.update(headers or {})
    payload = data if data is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + path, data=payload, headers=sent) as reply,
    ):
        assert reply.content_type == "application/json"
        return reply.status, await reply.json(), reply.headers


async def stored(stack: Stack, message_id: str) -> dict[str, Any] | None:
    payload = await stack.store.get_event_payload(stack.account_ids["acme"], message_id)
    return None if payload is None else json.loads(payload)


async def count(stack: Stack) -> int:
    return await stack.store.count_events(stack.account_ids["acme"])


@pytest.mark.parametrize("kind", ["track", "identify", "page", "screen", "group", "alias"])
@pytest.mark.parametrize("short", [False, True], ids=["long", "analytics.js"])
async def test_single_event_route_fixes_the_type(stack: Stack, kind: str, short: bool) -> None:
    # analytics.js posts to the first letter of the type: `/v1/t`, `/v1/i`, ...
    path = f"/v1/{kind[0] if short else kind}"
    event = {
        "userId": "u1",
        "event": "E",
        "groupId": "g1",
        "previousId": "p1",
        "messageId": f"m-{kind}",
        "type": "identify",
    }
    status, body, _ = await post(stack, path, event)
    assert status == 200, body
    assert body["success"] is True and body["results"][0]["outcome"] == "stored"
    assert (await stored(stack, f"m-{kind}") or {})["type"] == kind


async def test_analytics_js_batch_route_is_the_batch_route(stack: Stack) -> None:
    # What its batching delivery posts: the key as Basic and in the body, text/plain.
    batch = {
        "batch": [
            dict(TRACK, type="track", messageId="b-1"),
            {"type": "identify", "userId": "u1", "messageId": "b-2"},
            {"type": "track", "userId": "u1", "messageId": "b-3"},
        ],  # no event
        "writeKey": stack.keys["ingest"],
        "sentAt": "2024-01-01T00:00:00Z",
    }
    status, body, _ = await post(stack, "/v1/b", batch, headers={"Content-Type": "text/plain"})
    assert status == 200, body
    assert (body["stored"], body["rejected"]) == (2, 1)
    assert (await stored(stack, "b-1") or {})["sentAt"] == "2024-01-01T00:00:00Z"
    status, body, headers = await post(stack, "/v1/b", batch, key="not-a-key")
    assert (status, body["code"]) == (401, "invalid_api_key")
    assert "WWW-Authenticate" in headers


async def test_write_key_in_the_body_and_not_stored(stack: Stack) -> None:
    event = dict(TRACK, writeKey=stack.keys["ingest"])
    status, _, _ = await post(stack, "/v1/track", event, key=None)
    assert status == 200
    assert "writeKey" not in (await stored(stack, "m-1") or {"writeKey": 1})


async def test_bearer_token_with_write_key_in_the_body(stack: Stack) -> None:
    event = dict(TRACK, writeKey=stack.keys["ingest"])
    status, _, _ = await post(
        stack, "/v1/track", event, key=None, headers={"Authorization": "Bearer some.jwt.token"}
    )
    assert status == 200


@pytest.mark.parametrize(
    ("headers", "body_key", "code"),
    [
        ({}, None, "missing_authorization"),
        ({"Authorization": "Bearer x"}, None, "invalid_authorization"),
        ({"Authorization": "Basic !!"}, None, "invalid_authorization"),
        ({}, "not-a-key", "invalid_api_key"),
    ],
)
async def test_missing_or_wrong_write_key_is_401(
    stack: Stack, headers: dict[str, str], body_key: str | None, code: str
) -> None:
    body: dict[str, Any] = {"batch": [dict(TRACK, type="track")]}
    if body_key:
        body["writeKey"] = body_key
    status, answer, reply_headers = await post(stack, "/v1/batch", body, key=None, headers=headers)
    assert (status, answer["code"]) == (401, code)
    assert "message" in answer and "WWW-Authenticate" in reply_headers
    assert await count(stack) == 0


async def test_key_without_ingest_scope_is_403(stack: Stack) -> None:
    await stack.add_key("reader", scopes=("read",))
    status, answer, _ = await post(stack, "/v1/track", TRACK, key="reader")
    assert (status, answer["code"]) == (403, "missing_scope")


async def test_batch_merges_context_and_integrations_and_sent_at(stack: Stack) -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "userId": "u1",
                "event": "A",
                "messageId": "a",
                "context": {"library": {"name": "mine"}, "device": {"type": "ios"}},
            },
            {
                "type": "identify",
                "userId": "u1",
                "messageId": "b",
                "integrations": {"All": False},
                "sentAt": "2026-01-01T00:00:00Z",
            },
        ],
        "context": {"ip": "1.2.3.4", "device": {"id": "d1", "type": "android"}},
        "integrations": {"Salesforce": False},
        "sentAt": "2026-11-26T08:19:18.596191+00:00",
    }
    status, answer, _ = await post(stack, "/v1/batch", body)
    assert status == 200 and answer["stored"] == 2
    a, b = await stored(stack, "a"), await stored(stack, "b")
    assert a is not None and b is not None
    assert a["context"] == {
        "ip": "1.2.3.4",
        "device": {"id": "d1", "type": "ios"},
        "library": {"name": "mine"},
    }
    assert a["integrations"] == {"Salesforce": False}
    assert a["sentAt"] == "2026-11-26T08:19:18.596191+00:00"
    assert b["integrations"] == {"Salesforce": False, "All": False}
    assert b["sentAt"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track"])
async def test_events_are_stored_with_their_numbers_as_sent(stack: Stack, path: str) -> None:
    """An integer beyond 64 bits, `-0`, `1.50`: what a parser would change is stored as
    sent, through the SDK routes as through the webhook."""
    properties = ",".join(f'"{key}":{text}' for key, text in EXACT_TRAITS.items())
    event = f'{{"type":"track","event":"E","userId":"u","messageId":"exact","properties":{{{properties}}}}}'
    data = (
        f'{{"batch":[{event}],"sentAt":"2026-01-01T00:00:00Z"}}' if path == "/v1/batch" else event
    )
    status, answer, _ = await post(stack, path, data=data.encode())
    assert (status, answer["stored"]) == (200, 1)
    payload = await stack.store.get_event_payload(stack.account_ids["acme"], "exact")
    assert payload is not None and f'"properties":{{{properties}}}'.encode() in payload


async def test_a_batch_with_invalid_items_stores_the_others(stack: Stack) -> None:
    good = [
        {"type": "track", "userId": "u1", "event": "E", "messageId": f"g-{i}"} for i in range(3)
    ]
    body = {
        "batch": [
            good[0],
            {"type": "track", "userId": "u1", "messageId": "no-event"},  # no `event`
            good[1],
            "not an object",
            {"type": "track", "userId": "u1", "event": "x" * 40_000, "messageId": "huge"},
            {"type": "teleport", "userId": "u1", "messageId": "unknown-type"},
            good[2],
        ]
    }
    status, answer, _ = await post(stack, "/v1/batch", body)
    assert status == 200 and answer["success"] is True
    assert (answer["stored"], answer["rejected"]) == (3, 4)
    assert [r["status"] for r in answer["results"]] == [200, 400, 200, 400, 413, 501, 200]
    assert [r.get("code") for r in answer["results"]] == [
        None,
        "missing_field",
        None,
        "not_an_object",
        "event_too_large",
        "unknown_type",
        None,
    ]
    assert answer["results"][1]["messageId"] == "no-event"
    assert await count(stack) == 3


async def test_a_batch_resent_is_stored_once(stack: Stack) -> None:
    body = {"batch": [dict(TRACK, type="track"), dict(TRACK, type="track", messageId="m-2")]}
    assert (await post(stack, "/v1/import", body))[0] == 200
    status, answer, _ = await post(stack, "/v1/import", body)
    assert (status, answer["duplicates"]) == (200, 2)
    assert await count(stack) == 2


async def test_a_batch_where_every_event_fails_permanently_is_4xx(stack: Stack) -> None:
    body = {"batch": [{"type": "track", "userId": "u1"}, {"type": "group", "userId": "u1"}]}
    status, answer, _ = await post(stack, "/v1/batch", body)
    assert (status, answer["code"], answer["success"]) == (400, "missing_field", False)
    assert len(answer["results"]) == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "missing_field"),
        ({"batch": {}}, "wrong_type"),
        ({"batch": []}, "empty_batch"),
        ([], "not_an_object"),
    ],
)
async def test_bad_batch_bodies_are_400(stack: Stack, body: Any, code: str) -> None:
    status, answer, _ = await post(stack, "/v1/batch", body)
    assert (status, answer["code"]) == (400, code) and answer["message"]


async def test_too_many_events_is_400_and_nothing_stored(tmp_path: Path) -> None:
    config = BridgeConfig(host="127.0.0.1", port=0, sdk_max_batch_events=3)
    stack = await start_stack(tmp_path, bridge_config=config)
    try:
        body = {"batch": [dict(TRACK, type="track", messageId=f"t-{i}") for i in range(4)]}
        status, answer, _ = await post(stack, "/v1/batch", body)
        assert (status, answer["code"]) == (400, "too_many_events")
        assert await count(stack) == 0
    finally:
        await stack.stop()


async def test_gzip_body_and_text_plain_content_type(stack: Stack) -> None:
    body = {"batch": [dict(TRACK, type="track")]}
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    data = gzip.compress(json.dumps(body).encode())
    status, _, _ = await post(stack, "/v1/batch", headers=headers, data=data)
    assert status == 200 and await stored(stack, "m-1") is not None


async def test_chunked_gzip_body_without_content_length(stack: Stack) -> None:
    raw = gzip.compress(json.dumps({"batch": [dict(TRACK, type="track")]}).encode())

    async def chunks() -> Any:  # an async generator: aiohttp sends it chunked
        for start in range(0, len(raw), 7):
            yield raw[start : start + 7]

    status, _, _ = await post(
        stack, "/v1/import", headers={"Content-Encoding": "gzip"}, data=chunks()
    )
    assert status == 200 and await stored(stack, "m-1") is not None


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped a megabyte at a time (never all in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + compressor.flush()


async def test_a_gzip_bomb_is_413_without_inflating_it(stack: Stack) -> None:
    bomb = gzip_bomb(100 << 20)  # 100 MB of zeros
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        status, answer, _ = await post(
            stack, "/v1/batch", headers={"Content-Encoding": "gzip"}, data=bomb
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (status, answer["code"]) == (413, "payload_too_large")
    assert peak < 20 << 20, f"peak {peak} bytes while refusing the bomb"


async def test_a_plain_body_over_the_cap_is_413(stack: Stack) -> None:
    data = json.dumps({"batch": [], "pad": "x" * (600 * 1024)}).encode()
    status, answer, _ = await post(stack, "/v1/batch", data=data)
    assert (status, answer["code"]) == (413, "payload_too_large")


async def test_a_single_oversized_event_is_413(stack: Stack) -> None:
    status, answer, _ = await post(stack, "/v1/track", dict(TRACK, event="x" * 40_000))
    assert (status, answer["code"]) == (413, "event_too_large")


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "invalid_json"), (b"{nope", "invalid_json"), (b"[1]", "not_an_object")],
)
async def test_bad_json_is_400(stack: Stack, data: bytes, code: str) -> None:
    status, answer, _ = await post(stack, "/v1/track", data=data)
    assert (status, answer["code"]) == (400, code)


async def test_corrupt_gzip_is_400(stack: Stack) -> None:
    status, answer, _ = await post(
        stack, "/v1/batch", data=b"not gzip at all", headers={"Content-Encoding": "gzip"}
    )
    assert (status, answer["code"]) == (400, "invalid_body")


async def test_other_media_types_are_415(stack: Stack) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, answer, _ = await post(stack, "/v1/track", TRACK, headers=headers)
    assert (status, answer["code"]) == (415, "unsupported_media_type")


async def test_store_unavailable_is_503_for_the_whole_batch_then_the_retry_works(
    tmp_path: Path,
) -> None:
    stack = await start_stack(tmp_path, busy_timeout_ms=200)
    try:
        body = {"batch": [dict(TRACK, type="track"), {"type": "track", "userId": "u1"}]}
        blocker = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        status, answer, headers = await post(stack, "/v1/batch", body)
        blocker.execute("ROLLBACK")
        blocker.close()
        # One event failed for good (no `event`), one for a transient reason: 503, so
        # the SDK retries and the good one is not lost.
        assert (status, answer["code"], answer["success"]) == (503, "store_unavailable", False)
        assert "Retry-After" in headers and await count(stack) == 0
        status, answer, _ = await post(stack, "/v1/batch", body)
        assert (status, answer["stored"], answer["rejected"]) == (200, 1, 1)
    finally:
        await stack.stop()


async def test_rate_limited_key_is_429_with_retry_after(tmp_path: Path) -> None:
    from service.config import CoreConfig

    core = CoreConfig(listen="127.0.0.1:0", rate_limit_per_key=2)
    stack = await start_stack(tmp_path, core_config=core)
    try:
        # A batch larger than the burst goes in whole (else its retries never would)...
        body = {"batch": [dict(TRACK, type="track", messageId=f"r-{i}") for i in range(5)]}
        status, answer, _ = await post(stack, "/v1/batch", body)
        assert (status, answer["stored"]) == (200, 5)
        # ...and then the key waits: the SDK gets 429 and retries later.
        body = {"batch": [dict(TRACK, type="track", messageId="r-5")]}
        status, answer, headers = await post(stack, "/v1/batch", body)
        assert (status, answer["code"]) == (429, "rate_limited")
        assert headers["Retry-After"].isdigit()
    finally:
        await stack.stop()


async def test_write_keys_are_never_stored_or_echoed(stack: Stack) -> None:
    key = stack.keys["ingest"]
    body = {"batch": [dict(TRACK, type="track", writeKey=key)], "writeKey": key}
    status, answer, _ = await post(stack, "/v1/batch", body, key=None)
    assert status == 200 and key not in json.dumps(answer)
    payload = await stack.store.get_event_payload(stack.account_ids["acme"], "m-1")
    assert payload is not None and key.encode() not in payload
