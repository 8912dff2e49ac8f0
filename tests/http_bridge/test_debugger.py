"""The event debugger's JSON routes: who sees what, and what it shows."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.stack import Stack, basic

TRACK = {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "dbg-1"}


async def post(http: aiohttp.ClientSession, stack: Stack, key: str, body: bytes) -> int:
    headers = {
        "Authorization": basic(key),
        "Content-Type": "application/json",
        "User-Agent": "Segment.io/1.0",
    }
    async with http.post(f"{stack.url}/segment", data=body, headers=headers) as response:
        return response.status


async def get(
    http: aiohttp.ClientSession, stack: Stack, path: str, key: str | None
) -> tuple[int, dict[str, Any]]:
    """The status and the JSON body (a test reads into it freely)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.get(f"{stack.url}{path}", headers=headers) as response:
        return response.status, await response.json()


async def test_admins_see_their_accounts_requests_as_received_and_answered(stack: Stack) -> None:
    other = await stack.add_key("other", account="globex")
    async with aiohttp.ClientSession() as http:
        assert await post(http, stack, stack.keys["ingest"], orjson.dumps(TRACK)) == 200
        assert await post(http, stack, stack.keys["ingest"], orjson.dumps(TRACK)) == 200
        assert await post(http, stack, stack.keys["ingest"], b'{"type": "track"') == 400
        assert await post(http, stack, "inlet_0123456789abcdef_nope", orjson.dumps(TRACK)) == 401
        assert await post(http, stack, other, orjson.dumps(dict(TRACK, event="Theirs"))) == 200

        status, body = await get(http, stack, "/debugger/api/exchanges", stack.keys["admin"])
        assert status == 200 and body["viewer"] == "acme"
        listed = body["exchanges"]
        assert isinstance(listed, list)
        # Newest first; only acme's: not globex's event, not the unattributable 401.
        assert [(e["outcome"], e["status"]) for e in listed] == [
            ("rejected", 400),
            ("duplicate", 200),
            ("stored", 200),
        ]
        stored = listed[-1]
        assert (stored["type"], stored["event"], stored["user"], stored["messageId"]) == (
            "track",
            "Order Completed",
            "u1",
            "dbg-1",
        )

        status, detail = await get(
            http, stack, f"/debugger/api/exchanges/{stored['id']}", stack.keys["admin"]
        )
        assert status == 200
        request, response = detail["request"], detail["response"]
        assert isinstance(request, dict) and isinstance(response, dict)
        assert orjson.loads(request["body"]) == TRACK
        headers = dict(request["headers"])
        key_id = stack.keys["ingest"].split("_")[1]
        assert headers["Authorization"] == f"<redacted: key {key_id}>"
        assert headers["User-Agent"] == "Segment.io/1.0"
        assert orjson.loads(response["body"]) == {"message": "stored", "messageId": "dbg-1"}
        assert stack.keys["ingest"].split("_")[2] not in orjson.dumps(detail).decode()

        # Filters, and polling for what is new.
        status, rejected = await get(
            http, stack, "/debugger/api/exchanges?outcome=rejected", stack.keys["admin"]
        )
        assert [e["status"] for e in rejected["exchanges"]] == [400]
        newest = listed[0]["id"]
        status, newer = await get(
            http, stack, f"/debugger/api/exchanges?after={newest}", stack.keys["admin"]
        )
        assert newer["exchanges"] == []
        # Another account's exchange is not found, as if it did not exist.
        status, _ = await get(
            http, stack, f"/debugger/api/exchanges/{newest + 2}", stack.keys["admin"]
        )
        assert status == 404


async def test_operators_see_every_account_and_invalid_keys(stack: Stack) -> None:
    operator = await stack.add_key("op", account="ops", scopes=("operator",))
    async with aiohttp.ClientSession() as http:
        await post(http, stack, "inlet_0123456789abcdef_nope", orjson.dumps(TRACK))
        await post(http, stack, stack.keys["ingest"], orjson.dumps(TRACK))
        status, body = await get(http, stack, "/debugger/api/exchanges", operator)
        assert status == 200 and body["viewer"] == "*"
        assert [(e["account"], e["status"]) for e in body["exchanges"]] == [
            ("acme", 200),
            ("", 401),
        ]
        status, body = await get(http, stack, "/debugger/api/exchanges?account=acme", operator)
        assert len(body["exchanges"]) == 1


async def test_the_debugger_needs_an_admin_key(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await get(http, stack, "/debugger/api/exchanges", None)
        assert (status, body["code"]) == (401, "missing_authorization")
        status, body = await get(http, stack, "/debugger/api/exchanges", stack.keys["ingest"])
        assert (status, body["code"]) == (403, "missing_scope")
        status, body = await get(http, stack, "/debugger/api/exchanges", "inlet_0123456789abcdef_x")
        assert (status, body["code"]) == (401, "invalid_api_key")
        status, body = await get(
            http, stack, "/debugger/api/exchanges?after=x", stack.keys["admin"]
        )
        assert (status, body["code"]) == (400, "invalid_query")
        async with http.get(f"{stack.url}/debugger") as page:
            assert page.status == 200 and page.content_type == "text/html"
            assert "Inlet event debugger" in await page.text()


async def test_write_keys_in_sdk_bodies_never_reach_the_debugger(stack: Stack) -> None:
    key = stack.keys["ingest"]
    body = {
        "batch": [{"type": "track", "userId": "u1", "event": "E", "writeKey": key}],
        "writeKey": key,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.url}/v1/batch", json=body) as response:
            assert response.status == 200
        status, listed = await get(http, stack, "/debugger/api/exchanges", stack.keys["admin"])
        assert status == 200
        (exchange,) = listed["exchanges"]
        status, detail = await get(
            http, stack, f"/debugger/api/exchanges/{exchange['id']}", stack.keys["admin"]
        )
    assert status == 200
    text = orjson.dumps(detail).decode()
    assert key.split("_")[2] not in text and "<redacted>" in text


async def test_analytics_js_events_are_shown_with_their_type_and_nothing_else(
    stack: Stack,
) -> None:
    # What a page with analytics.js sends: a preflight, then the event to `/v1/t` (this
    # one without a `type`: the route fixes it), and its own client metrics.
    key = stack.keys["ingest"]
    operator = await stack.add_key("op", account="ops", scopes=("operator",))
    preflight = {"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST"}
    event = {"userId": "u1", "event": "Signed Up", "messageId": "js-1", "writeKey": key}
    async with aiohttp.ClientSession(headers={"Content-Type": "text/plain"}) as http:
        async with http.options(f"{stack.url}/v1/t", headers=preflight) as response:
            assert response.status == 204
        async with http.post(f"{stack.url}/v1/t", data=orjson.dumps(event)) as response:
            assert response.status == 200
        metrics = b'{"series": [{"metric": "analytics_js.invoke", "value": 1}]}'
        async with http.post(f"{stack.url}/v1/m", data=metrics) as response:
            assert response.status == 200
        # An operator sees every exchange, those of no account too.
        status, listed = await get(http, stack, "/debugger/api/exchanges", operator)
    assert status == 200
    # Only the event: a preflight carries none and client metrics are none.
    (shown,) = listed["exchanges"]
    assert (shown["path"], shown["type"], shown["event"], shown["outcome"]) == (
        "/v1/t",
        "track",
        "Signed Up",
        "stored",
    )


def test_every_credential_header_is_redacted_and_the_rest_kept_in_order() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from http_bridge.recorder import _without_secrets

    secret = "inlet_0123456789abcdef_topsecret"
    one = CIMultiDict([("Host", "x"), ("authorization", basic(secret)), ("Accept", "*/*")])
    kept = _without_secrets(CIMultiDictProxy(one))
    assert list(kept.items()) == [
        ("Host", "x"),
        ("Authorization", "<redacted: key 0123456789abcdef>"),
        ("Accept", "*/*"),
    ]
    assert one["Authorization"] == basic(secret)  # a copy: the request's own are untouched

    many = CIMultiDict(
        [
            ("Host", "x"),
            ("authorization", basic(secret)),
            ("Cookie", "session=s3cr3t"),
            ("AUTHORIZATION", "Bearer another-secret"),
            ("Proxy-Authorization", "Basic cHJveHk="),
        ]
    )
    kept = _without_secrets(CIMultiDictProxy(many))
    assert list(kept.items()) == [
        ("Host", "x"),
        ("authorization", "<redacted: key 0123456789abcdef>"),  # each one, as it came
        ("Cookie", "<redacted>"),
        ("AUTHORIZATION", "<redacted>"),  # not an Inlet key: no id to show
        ("Proxy-Authorization", "<redacted>"),
    ]


async def test_undecodable_header_bytes_still_reach_the_debugger_as_json(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.bridge.port)
    body = orjson.dumps({**TRACK, "messageId": "dbg-latin1"})
    writer.write(
        b"POST /segment HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"Authorization: "
        + basic(stack.keys["ingest"]).encode()
        + b"\r\n"
        + b"X-Note: caf\xe9\r\n"  # Latin-1, not UTF-8
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    async with aiohttp.ClientSession() as http:
        status, listed = await get(http, stack, "/debugger/api/exchanges", stack.keys["admin"])
        (exchange,) = listed["exchanges"]
        status, detail = await get(
            http, stack, f"/debugger/api/exchanges/{exchange['id']}", stack.keys["admin"]
        )
    assert status == 200
    assert dict(detail["request"]["headers"])["X-Note"] == "caf\\xe9"
