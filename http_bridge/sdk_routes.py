"""HTTP handlers of the SDK routes (`/v1/track`, ..., `/v1/batch`, `/v1/import`, and
analytics.js's `/v1/t`, ..., `/v1/b`).

Thin, like the webhook's: sdk.py does the parsing and the verdict; this module reads
the body within its limits, forwards the events and answers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from http_bridge import client_metrics, sdk
from http_bridge.access import ERROR_CODE
from http_bridge.app_keys import BATCHER, CONFIG
from http_bridge.config import BridgeConfig
from http_bridge.errors import CHALLENGE, PayloadTooLarge
from http_bridge.handlers import CORE_FAILURES, core_unavailable, json_response, read_body
from http_bridge.metrics import METRICS
from http_bridge.recorder import ACCOUNT, BODY, redact_write_keys
from http_bridge.status_map import RETRY_LATER
from service.handoff import Submission, Verdict
from service.logs import REQUEST_ID
from service.timestamps import now_us

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def read_capped(request: web.Request, config: BridgeConfig, limit: int) -> bytes:
    """The body, decoded (`Content-Encoding: gzip`/`deflate`, chunked or not), at most
    `limit` bytes after decoding (`sdk_max_batch_bytes` for events).

    The cap counts decoded bytes as they arrive, so a gzip bomb costs at most the cap
    in memory, never its expanded size: aiohttp inflates a chunk at a time (bounded by
    its read buffer) and this loop stops at the first byte past the cap. The
    application's `client_max_size` cannot do this here: it is the webhook's limit and
    only applies to `request.read()`.

    Raises:
        PayloadTooLarge: more than the cap (413).
        RequestTimeout: the body took longer than `body_timeout_s` (408, SDKs retry).
        BadRequest: broken chunked framing or compressed data (400).
    """
    too_large = PayloadTooLarge(
        f"the body is larger than the {limit}-byte limit (after decompression)",
        "payload_too_large",
    )
    if (
        request.content_length is not None
        and request.content_length > limit
        and "Content-Encoding" not in request.headers
    ):
        raise too_large

    async def capped() -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    return await read_body(request, config, capped())


def sdk_handler(route: str) -> Handler:
    """The handler of one SDK route (the route decides the `type` or that it is a batch)."""

    async def handle(request: web.Request) -> web.Response:
        config = request.app[CONFIG]
        sdk.check_sdk_media_type(request.headers.get("Content-Type"))
        raw_body = await read_capped(request, config, config.sdk_max_batch_bytes)
        # The debugger shows bodies: never with the write key analytics-python puts in them.
        request[BODY] = redact_write_keys(raw_body)
        body = sdk.parse_body(raw_body)
        api_key = sdk.write_key_from(request.headers.get("Authorization"), body)
        events = sdk.events_from(body, route, config.sdk_max_batch_events)
        encoded = sdk.encode_events(
            raw_body.decode(),  # UTF-8: parse_body checked it
            body,
            route,
            events,
            config.sdk_max_event_bytes,
        )
        received_at_us = now_us()
        items = [
            Submission(raw, api_key, received_at_us=received_at_us)
            for raw in encoded
            if isinstance(raw, bytes)
        ]
        results: list[Verdict] = []
        if items:
            # One request → one group in the batcher → one IngestBatch call and one
            # store transaction (batcher.py), under the same overload caps as the webhook.
            size = sum(len(item.json) for item in items)
            try:
                results = await request.app[BATCHER].submit_many(
                    items, size, config.request_timeout_s, REQUEST_ID.get() or ""
                )
            except CORE_FAILURES as error:
                raise core_unavailable(error, config) from None
        request[ACCOUNT] = next((r.account for r in results if r.account), "")
        core_verdicts = iter(results)
        outcomes = [
            raw
            if isinstance(raw, sdk.ItemOutcome)
            else sdk.outcome_of(next(core_verdicts), sdk.message_id_of(event))
            for event, raw in zip(events, encoded, strict=True)
        ]
        status, answer = sdk.verdict(outcomes)
        if status == 200 and answer["rejected"]:
            # Segment's Tracking API also answers 200 here; its Debugger shows the
            # rejects. Ours: this log line and the response body.
            log.info(
                "%s: %d of %d events rejected: %s",
                route,
                answer["rejected"],
                len(outcomes),
                sorted({o.code for o in outcomes if o.code}),
            )
        headers = None
        if status in RETRY_LATER:
            headers = {"Retry-After": str(config.retry_after_s)}
        elif status == 401:
            headers = dict(CHALLENGE)
        response = json_response(status, answer, headers)
        if "code" in answer:
            response[ERROR_CODE] = answer["code"]  # for the access log and metrics
        return response

    handle.__name__ = "sdk_" + route.rsplit("/", 1)[-1]
    return handle


async def sdk_client_metrics(request: web.Request) -> web.Response:
    """POST /v1/m: analytics.js's metrics about itself, counted and dropped
    (client_metrics.py says why)."""
    sdk.check_sdk_media_type(request.headers.get("Content-Type"))
    raw_body = await read_capped(request, request.app[CONFIG], client_metrics.MAX_BYTES)
    names = client_metrics.counted(sdk.parse_body(raw_body))
    counters = request.app[METRICS].client_metrics
    for name in names:
        counters[name].inc()
    return json_response(200, {"message": "counted, not stored", "counted": len(names)})
