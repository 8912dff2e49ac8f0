"""Every row of the README's status contract, over real HTTP against a real core and store."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry

from http_bridge.config import BridgeConfig
from http_bridge.server import BridgeServer, start_bridge
from inlet.v1 import events_pb2, events_pb2_grpc
from service.config import CoreConfig
from service.store import SqliteStore
from tests.stack import Stack, basic, start_stack

SAMPLES = Path(__file__).resolve().parents[2] / "inlet_tools" / "samples"
TRACK = {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m-1"}


async def post(
    stack: Stack | str,
    body: Any = None,
    *,
    key: str | None = "ingest",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    url = stack if isinstance(stack, str) else stack.url + "/segment"
    sent = {"Content-Type": "application/json", "User-Agent": "Segment.io/1.0"}
    if key is not None and isinstance(stack, Stack):
        sent["Authorization"] = basic(stack.keys.get(key, key))
    sent.update(headers or {})
    payload = data if data is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=payload, headers=sent) as reply,
    ):
        assert reply.content_type == "application/json"
        return reply.status, await reply.json(), reply.headers


async def stored(stack: Stack, message_id: str) -> dict[str, Any] | None:
    payload = await stack.store.get_event_payload(stack.account_ids["acme"], message_id)
    return None if payload is None else json.loads(payload)


# -- 200 -----------------------------------------------------------------------------


async def test_stored_event_answers_200_and_is_in_the_store(stack: Stack) -> None:
    status, body, _ = await post(stack, TRACK)
    assert (status, body) == (200, {"message": "stored", "messageId": "m-1"})
    assert await stored(stack, "m-1") == TRACK


async def test_redelivered_message_id_is_200_and_stored_once(stack: Stack) -> None:
    assert (await post(stack, TRACK))[0] == 200
    status, body, _ = await post(stack, TRACK)
    assert status == 200 and body["duplicate"] is True
    assert await stack.store.count_events(stack.account_ids["acme"]) == 1


async def test_concurrent_redeliveries_store_once(stack: Stack) -> None:
    replies = await asyncio.gather(*(post(stack, TRACK) for _ in range(20)))
    assert {status for status, _, _ in replies} == {200}
    assert sum(1 for _, body, _ in replies if not body.get("duplicate")) == 1
    assert await stack.store.count_events(stack.account_ids["acme"]) == 1


async def test_many_concurrent_events_each_get_their_own_result(stack: Stack) -> None:
    events = [dict(TRACK, messageId=f"c-{i}") for i in range(150)]
    events[7] = {"type": "track", "userId": "u1", "messageId": "bad"}  # no `event`
    replies = await asyncio.gather(*(post(stack, e) for e in events))
    assert [status for status, _, _ in replies].count(200) == 149
    assert replies[7][0] == 400 and replies[7][1]["code"] == "missing_field"
    assert await stack.store.count_events(stack.account_ids["acme"]) == 149


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.stem)
async def test_segment_samples_are_accepted(stack: Stack, sample: Path) -> None:
    status, body, _ = await post(stack, data=sample.read_bytes())
    assert status == 200, body
    assert await stored(stack, body["messageId"]) == json.loads(sample.read_bytes())


async def test_settings_header_is_stored_with_the_event(stack: Stack) -> None:
    settings = base64.b64encode(b'{"customSettingOne": "custom setting value"}').decode()
    status, _, _ = await post(stack, TRACK, headers={"X-Segment-Settings": settings})
    assert status == 200
    db = sqlite3.connect(Path(stack.store.path))  # type: ignore[attr-defined]
    (saved,) = db.execute("SELECT settings FROM events WHERE message_id = 'm-1'").fetchone()
    assert json.loads(saved) == {"customSettingOne": "custom setting value"}


async def test_settings_of_the_documented_form_that_are_not_json_do_not_fail_the_event(
    stack: Stack,
) -> None:
    # base64 of `{...}`: openapi.yaml's pattern admits it, so refusing it would refuse a
    # schema-valid request; the event is stored without the settings, and the answer says so.
    header = base64.b64encode(b"{not json}").decode()
    status, body, _ = await post(stack, TRACK, headers={"X-Segment-Settings": header})
    assert (status, body) == (
        200,
        {"message": "stored", "messageId": "m-1", "settingsDropped": True},
    )
    assert await stored(stack, "m-1") == TRACK
    db = sqlite3.connect(Path(stack.store.path))  # type: ignore[attr-defined]
    assert db.execute("SELECT settings FROM events WHERE message_id = 'm-1'").fetchone() == (None,)
    status, body, _ = await post(stack, TRACK, headers={"X-Segment-Settings": header})
    assert (status, body["duplicate"], body["settingsDropped"]) == (200, True, True)
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/metrics") as reply:
        assert "inlet_settings_dropped_total 2.0" in await reply.text()


async def test_unusual_casing_is_understood(stack: Stack) -> None:
    event = {"TYPE": "Alias", "Previous ID": 42, "user_id": "u9", "Message-Id": "case-1"}
    status, body, _ = await post(stack, event)
    assert (status, body["messageId"]) == (200, "case-1")
    assert await stored(stack, "case-1") == event  # the customer's keys, as sent


# -- 400 -----------------------------------------------------------------------------

BAD_BODIES = [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"track"', "not_an_object"),
    (b'{"type": "track", "userId": "u1"}', "missing_field"),
    (b'{"type": "group", "userId": "u1"}', "missing_field"),
    (b'{"type": "alias", "userId": "u1"}', "missing_field"),
    (b'{"type": "delete", "anonymousId": "a1"}', "missing_field"),
    (b'{"type": "identify"}', "missing_field"),
    (b'{"userId": "u1"}', "missing_field"),
    (b'{"type": "", "userId": "u1"}', "missing_field"),
    (b'{"type": "identify", "userId": "u1", "traits": []}', "wrong_type"),
    (b'{"type": "track", "userId": true, "event": "x"}', "wrong_type"),
    (b'{"type": 7, "userId": "u1"}', "wrong_type"),
    (b'{"type": "identify", "userId": "\xff\xfe"}', "invalid_json"),  # not UTF-8
    (b'{"type": "identify", "userId": "\\ud800"}', "invalid_json"),  # lone surrogate
    (b"[" * 5000 + b"]" * 5000, "invalid_json"),  # nesting beyond 1024 levels
    (b'{"type": "track", "userId": "u", "event": "x", "properties": {"n": 1e400}}', "invalid_json"),
]


@pytest.mark.parametrize(
    ("data", "code"), BAD_BODIES, ids=[c + str(i) for i, (_, c) in enumerate(BAD_BODIES)]
)
async def test_bad_event_is_400_with_a_reason(stack: Stack, data: bytes, code: str) -> None:
    status, body, _ = await post(stack, data=data)
    assert (status, body["code"]) == (400, code)
    assert body["message"]
    # The core is still fine afterwards.
    assert (await post(stack, TRACK))[0] == 200


async def test_missing_event_message_names_the_field(stack: Stack) -> None:
    _, body, _ = await post(stack, {"type": "track", "userId": "u1"})
    assert body == {"message": "track requires `event`", "code": "missing_field"}


@pytest.mark.parametrize(
    "settings",
    ["not base64!", *(base64.b64encode(text).decode() for text in (b"[1]", b"{", b' {"a":1}'))],
)
async def test_bad_settings_header_is_400(stack: Stack, settings: str) -> None:
    status, body, _ = await post(stack, TRACK, headers={"X-Segment-Settings": settings})
    assert (status, body["code"]) == (400, "invalid_settings")
    assert await stored(stack, "m-1") is None


# -- 401 / 403 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_authorization"),
        ("Bearer abc", "invalid_authorization"),
        ("Basic %%%", "invalid_authorization"),
        ("Basic Og==", "missing_api_key"),  # base64(":")
        (basic("inlet_0000000000000000_nope"), "invalid_api_key"),
        (basic("segment"), "invalid_api_key"),
    ],
)
async def test_bad_credentials_are_401(stack: Stack, authorization: str | None, code: str) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, reply_headers = await post(stack, TRACK, key=None, headers=headers)
    assert (status, body["code"]) == (401, code)
    assert reply_headers["WWW-Authenticate"] == 'Basic realm="inlet"'


async def test_revoked_and_expired_keys_are_401_indistinguishable_from_unknown(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = await stack.add_key("doomed")
    await stack.store.revoke_key(revoked.split("_")[1])  # as `inlet keys revoke` does
    expired = await stack.add_key("old", expires_at_us=time.time_ns() // 1000 - 1)
    unknown = "inlet_0123456789abcdef_" + "x" * 43
    with caplog.at_level(logging.INFO, logger="service.auth"):
        answers = [await post(stack, TRACK, key=key) for key in (revoked, expired, unknown)]
    # No oracle: the caller cannot tell which key ids exist or were revoked...
    assert {(status, json.dumps(body)) for status, body, _ in answers} == {
        (401, json.dumps({"message": "the API key is not valid", "code": "invalid_api_key"}))
    }
    # ...the operator can, by key id, and the secret is never logged.
    assert f"refused API key {revoked.split('_')[1]}: revoked" in caplog.text
    assert f"refused API key {expired.split('_')[1]}: expired" in caplog.text
    for key in (revoked, expired):
        assert key.split("_")[2] not in caplog.text


async def test_key_without_ingest_scope_is_403(stack: Stack) -> None:
    await stack.add_key("reader", scopes=("read",))
    status, body, _ = await post(stack, TRACK, key="reader")
    assert (status, body["code"]) == (403, "missing_scope")


async def test_suspended_account_is_403(stack: Stack) -> None:
    await stack.add_key("other", account="globex")
    await stack.store.set_account_suspended("globex", True)
    status, body, _ = await post(stack, TRACK, key="other")
    assert (status, body["code"]) == (403, "account_suspended")


# -- 413 / 415 / 405 / 404 -----------------------------------------------------------


async def test_oversized_body_is_413(stack: Stack) -> None:
    big = dict(TRACK, properties={"blob": "x" * (600 * 1024)})
    status, body, _ = await post(stack, big)
    assert (status, body["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_content_type_is_415(stack: Stack, content_type: str) -> None:
    status, body, _ = await post(stack, TRACK, headers={"Content-Type": content_type})
    assert (status, body["code"]) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.segment+json"]
)
async def test_json_content_type_variants_are_accepted(stack: Stack, content_type: str) -> None:
    assert (await post(stack, TRACK, headers={"Content-Type": content_type}))[0] == 200


async def test_aiohttp_own_errors_are_json(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url + "/segment") as reply:
            assert reply.status == 405 and "POST" in reply.headers["Allow"]
            assert (await reply.json())["code"] == "method_not_allowed"
        async with session.get(stack.url + "/nowhere") as reply:
            assert reply.status == 404 and (await reply.json())["code"] == "not_found"


async def test_no_answer_names_the_software_versions(stack: Stack) -> None:
    """Scanners report a `Server: Python/3.x aiohttp/3.y` header; every answer says
    only `inlet`, stored, rejected, refused, unknown path or probe alike."""
    track = {"type": "track", "userId": "u1", "event": "Seen", "messageId": "srv-1"}
    auth = {"Authorization": basic(stack.keys["ingest"])}
    async with aiohttp.ClientSession() as session:
        answers = [
            session.post(stack.url + "/segment", json=track, headers=auth),
            session.post(stack.url + "/segment", json={"type": "track"}, headers=auth),
            session.post(stack.url + "/segment", json=track),
            session.get(stack.url + "/segment"),
            session.get(stack.url + "/nowhere"),
            session.get(stack.url + "/healthz"),
        ]
        statuses = []
        for answer in answers:
            async with answer as reply:
                statuses.append(reply.status)
                assert reply.headers.getall("Server") == ["inlet"]
    assert statuses == [200, 400, 401, 405, 404, 200]


# -- 501 -----------------------------------------------------------------------------


async def test_unknown_type_is_501(stack: Stack) -> None:
    status, body, _ = await post(stack, {"type": "teleport", "userId": "u1"})
    assert (status, body["code"]) == (501, "unknown_type")


async def test_type_not_enabled_in_the_deployment_is_501(tmp_path: Path) -> None:
    config = CoreConfig(listen="127.0.0.1:0", supported_types=("identify", "track"))
    stack = await start_stack(tmp_path, core_config=config)
    try:
        status, body, _ = await post(stack, {"type": "page", "userId": "u1", "name": "Home"})
        assert (status, body["code"]) == (501, "type_not_supported")
        assert (await post(stack, TRACK))[0] == 200
    finally:
        await stack.stop()


# -- 503 -----------------------------------------------------------------------------


async def bridge_to_core(
    core_port: int, core_timeout_s: float = 1.0, registry: CollectorRegistry | None = None
) -> BridgeServer:
    """A bridge alone, in front of whatever listens (or not) on `core_port`."""
    config = BridgeConfig(
        host="127.0.0.1",
        port=0,
        core_target=f"127.0.0.1:{core_port}",
        core_timeout_s=core_timeout_s,
        request_timeout_s=2.0,
    )
    return await start_bridge(config, registry=registry)


async def test_core_unreachable_is_503_with_retry_after(unused_tcp_port: int) -> None:
    bridge = await bridge_to_core(unused_tcp_port)
    try:
        url = f"http://127.0.0.1:{bridge.port}"
        started = time.monotonic()
        status, body, headers = await post(
            url + "/segment", TRACK, headers={"Authorization": basic("inlet_x_y")}
        )
        assert (status, body["code"]) == (503, "core_unavailable")
        assert int(headers["Retry-After"]) > 0
        assert time.monotonic() - started < 3  # within the deadline, no hang
        async with aiohttp.ClientSession() as session, session.get(url + "/readyz") as reply:
            assert reply.status == 503 and "Retry-After" in reply.headers
    finally:
        await bridge.stop()


class StalledCore(events_pb2_grpc.EventServiceServicer):
    """A core that takes every call and never answers (as one stopped by SIGSTOP)."""

    def __init__(self) -> None:
        self.calls = 0
        self.deadlines: list[float | None] = []  # each call's time left, as it arrived
        self.release = asyncio.Event()

    async def IngestBatch(
        self, request: events_pb2.IngestBatchRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.IngestBatchResponse:
        self.calls += 1
        self.deadlines.append(context.time_remaining())
        await self.release.wait()
        return events_pb2.IngestBatchResponse()


async def test_a_core_that_does_not_answer_in_time_is_503_core_timeout() -> None:
    stalled = StalledCore()  # type: ignore[abstract]  # only IngestBatch is ever called
    server = grpc.aio.server()
    events_pb2_grpc.add_EventServiceServicer_to_server(stalled, server)
    core_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    bridge = await bridge_to_core(core_port, core_timeout_s=0.5)
    try:
        url = f"http://127.0.0.1:{bridge.port}/segment"
        status, body, headers = await post(url, TRACK, headers={"Authorization": basic("k")})
        assert (status, body["code"]) == (503, "core_timeout")
        assert int(headers["Retry-After"]) > 0
        assert stalled.calls == 1  # the core was reached: it is slow, not unreachable
        (deadline,) = stalled.deadlines  # the core's deadline (0.5 s), not the request's (2 s)
        assert deadline is not None and 0 < deadline <= 0.5
    finally:
        stalled.release.set()
        await bridge.stop()
        await server.stop(grace=None)


async def test_an_unreachable_core_logs_one_warning_and_counts_every_refusal(
    unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    bridge = await bridge_to_core(unused_tcp_port, registry=registry)
    try:
        caplog.clear()  # from here on
        url, headers = f"http://127.0.0.1:{bridge.port}/segment", {"Authorization": basic("k")}
        replies = await asyncio.gather(*(post(url, TRACK, headers=headers) for _ in range(100)))
        assert {(status, body["code"]) for status, body, _ in replies} == {
            (503, "core_unavailable")
        }
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "core_unavailable" in warnings[0].getMessage()
        assert (
            registry.get_sample_value("inlet_http_errors_total", {"code": "core_unavailable"})
            == 100
        )
    finally:
        await bridge.stop()


async def test_locked_database_is_503_and_nothing_is_half_written(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, busy_timeout_ms=200)
    try:
        blocker = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        status, body, headers = await post(stack, TRACK)
        assert (status, body["code"]) == (503, "store_unavailable")
        assert "Retry-After" in headers
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await stored(stack, "m-1") is None
        # Segment's retry then succeeds, with no restart.
        assert (await post(stack, TRACK))[0] == 200
        assert await stored(stack, "m-1") == TRACK
    finally:
        await stack.stop()


# -- health ------------------------------------------------------------------------


async def test_health_routes(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url + "/healthz") as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "ok"})
        async with session.get(stack.url + "/readyz") as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "ready"})


# -- hostile input found in review ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw_id", "stored_as"),
    [(b"42", "42"), (b"42.0", "42"), (b"-9223372036854775808", "-9223372036854775808")],
)
async def test_integer_ids_are_stored_as_strings(
    stack: Stack, raw_id: bytes, stored_as: str
) -> None:
    body = b'{"type": "track", "userId": "u", "event": "E", "messageId": ' + raw_id + b"}"
    status, reply, _ = await post(stack, data=body)
    assert (status, reply["messageId"]) == (200, stored_as)


@pytest.mark.parametrize(
    "raw_id",
    [
        b"123456789012345678901234567890",
        b"123456789012345678901234567891",
        b"0.1",
        b"1e300",
        b"9223372036854775808",
    ],
)
async def test_inexact_numeric_ids_are_refused_not_merged(stack: Stack, raw_id: bytes) -> None:
    # Parsed as floats, two such ids would print alike and the second event would be
    # answered "already stored" without ever being stored.
    body = b'{"type": "track", "userId": "u", "event": "E", "messageId": ' + raw_id + b"}"
    status, reply, _ = await post(stack, data=body)
    assert (status, reply["code"]) == (400, "wrong_type")


async def test_undecodable_content_type_is_a_json_415(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.bridge.port)
    request = (
        b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: \xff\xfe/json\r\n"
        b"Authorization: " + basic(stack.keys["ingest"]).encode() + b"\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    writer.write(request)
    reply = await reader.read()
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 415") and b"application/json" in head
    assert json.loads(body)["code"] == "unsupported_media_type"


async def test_corrupt_gzip_body_is_400(stack: Stack) -> None:
    headers = {"Content-Encoding": "gzip"}
    status, body, _ = await post(stack, data=b"definitely not gzip", headers=headers)
    assert (status, body["code"]) == (400, "invalid_body")


async def test_large_settings_header_is_accepted(stack: Stack) -> None:
    settings = {f"setting{i}": "x" * 40 for i in range(250)}  # ~14 KB once base64-encoded
    header = base64.b64encode(json.dumps(settings).encode()).decode()
    assert len(header) > 8190  # aiohttp's default limit, which would answer 400
    status, _, _ = await post(stack, TRACK, headers={"X-Segment-Settings": header})
    assert status == 200


async def test_store_read_failure_during_key_lookup_is_503(stack: Stack) -> None:
    fresh = await stack.add_key("fresh")  # not cached yet: the core must read the store
    store = stack.store
    assert isinstance(store, SqliteStore)

    def fail_every_statement(conn: sqlite3.Connection) -> None:
        # SQLite interrupts each statement on the writer connection at its first step:
        # it fails with the sqlite3.OperationalError a failing disk gives ("interrupted").
        conn.set_progress_handler(lambda: 1, 1)

    await store.use_writer(fail_every_statement)
    try:
        status, body, headers = await post(stack, TRACK, key="fresh")
    finally:
        await store.use_writer(lambda conn: conn.set_progress_handler(None, 1))
    assert (status, body["code"]) == (503, "store_unavailable") and "Retry-After" in headers
    assert fresh and (await post(stack, TRACK, key="fresh"))[0] == 200


async def test_keys_never_appear_in_logs_or_answers(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    key = stack.keys["ingest"]
    secret = key.split("_")[2]
    wrong_secret = key[:-4] + "AAAA"
    answers = []
    with caplog.at_level(logging.DEBUG):
        answers.append(await post(stack, TRACK))
        answers.append(await post(stack, TRACK, key=wrong_secret))
        answers.append(await post(stack, {"type": "track", "userId": "u"}))
        answers.append(await post(stack, data=b"{not json"))
        answers.append(await post(stack, {"type": "teleport", "userId": "u"}))
    for status, body, headers in answers:
        shown = json.dumps(body) + json.dumps(dict(headers))
        assert secret not in shown and "AAAA" not in shown, status
    assert secret not in caplog.text and wrong_secret not in caplog.text
