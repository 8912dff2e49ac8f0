"""HTTP handlers: the Segment webhook and the health routes. Thin: syntax in, gRPC out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from http_bridge.access import ERROR_CODE, MESSAGE_ID
from http_bridge.app_keys import BATCHER, CONFIG, CORE
from http_bridge.batcher import QueueFull
from http_bridge.config import BridgeConfig
from http_bridge.errors import CHALLENGE, BadRequest, RequestTimeout, Unavailable
from http_bridge.metrics import METRICS
from http_bridge.recorder import ACCOUNT, BODY
from http_bridge.segment import api_key_from_authorization, check_media_type, decode_settings
from http_bridge.status_map import RETRY_LATER, http_status_for
from inlet.v1 import events_pb2
from service.handoff import Submission, Verdict
from service.logs import REQUEST_ID
from service.timestamps import now_us

JSON = "application/json"
T = TypeVar("T")


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    try:
        payload = orjson.dumps(body)
    except TypeError:  # e.g. a lone surrogate in a message: still answer JSON
        payload = orjson.dumps(
            {k: str(v).encode("utf-8", "backslashreplace").decode("ascii") for k, v in body.items()}
        )
    return web.Response(status=status, body=payload, content_type=JSON, headers=headers)


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    response = json_response(status, {"message": message, "code": code}, headers)
    response[ERROR_CODE] = code  # for the access log
    return response


def result_response(
    result: Verdict, retry_after_s: int, settings_dropped: bool = False
) -> web.Response:
    """The HTTP answer for the core's verdict on one event (docs/design.md, "The status table").

    `settings_dropped`: X-Segment-Settings had the documented form but was not JSON."""
    if result.outcome in (events_pb2.OUTCOME_STORED, events_pb2.OUTCOME_DUPLICATE):
        body: dict[str, Any] = {"message": "stored", "messageId": result.message_id}
        if result.outcome == events_pb2.OUTCOME_DUPLICATE:
            # Segment redelivers after timeouts: a duplicate is a success, not an error.
            body.update(message="already stored", duplicate=True)
        if settings_dropped:
            body["settingsDropped"] = True
        return json_response(200, body)
    if result.outcome == events_pb2.OUTCOME_SUPPRESSED:
        # An event of a deleted user, not stored for good: 200, or Segment retries it.
        body = {"message": result.message, "messageId": result.message_id, "suppressed": True}
        return json_response(200, body)
    status = http_status_for(result.code)
    if status == 500 or result.outcome != events_pb2.OUTCOME_REJECTED:
        return error_response(500, "internal error", "internal")
    headers = None
    if status in RETRY_LATER:
        headers = {"Retry-After": str(retry_after_s)}
    elif status == 401:
        headers = dict(CHALLENGE)
    return error_response(status, result.message, result.reason, headers)


async def read_body(request: web.Request, config: BridgeConfig, reading: Awaitable[T]) -> T:
    """`reading` (of `request`'s body) within `body_timeout_s`, which keeps a trickling
    (slow-loris) client from holding a connection and a handler. No timer when the body
    has all arrived already, as most do with their headers: arming and cancelling one
    cost ~4 % of a request's CPU (bench/instructions.py).

    Raises:
        RequestTimeout: the body took longer (408; senders retry).
        BadRequest: broken chunked framing or Content-Encoding (400).
    """
    try:
        if request.content.is_eof():
            return await reading
        async with asyncio.timeout(config.body_timeout_s):
            return await reading
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {config.body_timeout_s:g} s", "request_timeout"
        ) from None
    except (HttpProcessingError, RequestPayloadError):  # the client's framing or encoding
        raise BadRequest(
            "the body could not be read: bad chunked framing or Content-Encoding", "invalid_body"
        ) from None


#: What the batcher raises when an event could not be handed over (503: see core_unavailable).
CORE_FAILURES: Final = (QueueFull, TimeoutError, ConnectionError)


def core_unavailable(error: Exception, config: BridgeConfig) -> Unavailable:
    """The 503 for one of CORE_FAILURES (every one is transient: retry later).

    A function for an `except CORE_FAILURES` clause rather than a context manager: the
    webhook pays for it only when it fails (a generator-based one costs ~1 µs a request).
    """
    if isinstance(error, QueueFull):
        return Unavailable(
            "too many requests are waiting, retry later", "overloaded", config.retry_after_s
        )
    if isinstance(error, TimeoutError):
        return Unavailable(
            "the event store did not answer in time, retry later",
            "core_timeout",
            config.retry_after_s,
        )
    # ConnectionError: the batch call was cancelled, the bridge is stopping.
    return Unavailable(
        "the bridge is shutting down, retry later", "shutting_down", config.retry_after_s
    )


async def segment_event(request: web.Request) -> web.Response:
    """POST /segment: one Segment event, answered once it is durably stored (or refused)."""
    config = request.app[CONFIG]
    api_key = api_key_from_authorization(request.headers.get("Authorization"))
    check_media_type(request.headers.get("Content-Type"))
    settings = decode_settings(request.headers.get("X-Segment-Settings"))
    # client_max_size: 413 as soon as the limit is passed.
    body = await read_body(request, config, request.read())
    request[BODY] = body
    item = Submission(body, api_key, settings or b"", now_us())
    try:
        result = await request.app[BATCHER].submit(
            item, len(body), config.request_timeout_s, REQUEST_ID.get() or ""
        )
    except CORE_FAILURES as error:
        raise core_unavailable(error, config) from None
    request[ACCOUNT] = result.account
    response = result_response(result, config.retry_after_s, settings is None)
    if settings is None:
        request.app[METRICS].settings_dropped.inc()
    if result.message_id:
        response[MESSAGE_ID] = result.message_id
    return response


async def expect(request: web.Request) -> web.Response | None:
    """`Expect: 100-continue` as aiohttp does it; any other expectation gets a JSON 417
    (aiohttp's own answer would be plain text, outside the error middleware)."""
    value = request.headers.get("Expect", "")
    if request.version != (1, 1):
        return None
    if value.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler does
        return None
    return error_response(417, "only `Expect: 100-continue` is supported", "expectation_failed")


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the core is reachable and serving, so events can be stored now."""
    if await request.app[CORE].ready():
        return json_response(200, {"status": "ready"})
    retry = str(request.app[CONFIG].retry_after_s)
    return error_response(
        503, "the core is unreachable or not serving", "not_ready", {"Retry-After": retry}
    )
