"""The one middleware every request crosses: errors as JSON, CORS, the debugger's
record, then the request id, metrics and access line.

One middleware rather than four: each aiohttp middleware layer costs a coroutine and
a handler partial per request, and at thousands of requests a second on two cores
that showed in the benchmark. The steps stay in their own modules (access.py,
cors.py, recorder.py); this file only orders them:

1. the handler runs with the request id in `REQUEST_ID` (every log line names it);
2. whatever it raised becomes a JSON `{"message", "code"}` answer (`answer_for`);
3. CORS headers on /v1/* answers, errors included (cors.py);
4. while the bridge drains (drain.py), the answer closes its connection;
5. the exchange is recorded for the debugger as the client gets it (recorder.py);
6. the request id header, metrics and the access line (access.py).
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from http_bridge import access, cors, handlers
from http_bridge.app_keys import CONFIG
from http_bridge.drain import Drain
from http_bridge.errors import BridgeError
from http_bridge.metrics import BridgeMetrics
from http_bridge.recorder import Recorder
from service.logs import REQUEST_ID, RateLimitedLog, sane_request_id

log = logging.getLogger(__name__)

# Codes for aiohttp's own HTTP errors (router 404/405, body limit 413, ...).
_CODES: Final = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def edge(
    access_log: access.AccessLog,
    metrics: BridgeMetrics,
    recorder: Recorder | None,
    recorded_paths: tuple[str, ...],
    unrecorded_paths: frozenset[str],
    drain: Drain,
) -> Middleware:
    """The middleware; `recorder` keeps the exchanges under `recorded_paths` (None: off),
    except CORS preflights and those on `unrecorded_paths`."""
    # An unreachable core fails every request: one warning per code a minute, not one each.
    warnings = RateLimitedLog(log)

    @web.middleware
    async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = sane_request_id(request.headers.get("X-Request-Id"))
        token = REQUEST_ID.set(request_id)
        metrics.in_flight += 1
        try:
            try:
                response = await handler(request)
            except Exception as exc:  # noqa: BLE001 - answer_for re-raises what it cannot answer
                response = answer_for(exc, request, warnings)
            cors.allow(request, response)
            if drain.active:
                response.force_close()  # aiohttp then sends `Connection: close` and closes
            if (
                recorder is not None
                and request.path.startswith(recorded_paths)
                and request.method != "OPTIONS"
                and request.path not in unrecorded_paths
            ):
                recorder.add(request, response, started)
            access_log.finish(request, response, request_id, started)
            return response
        finally:
            metrics.in_flight -= 1
            REQUEST_ID.reset(token)

    return edge_middleware


def answer_for(
    exc: Exception, request: web.Request, warnings: RateLimitedLog
) -> web.StreamResponse:
    """Every error leaves as JSON `{"message", "code"}`: ours, aiohttp's, and bugs.
    Our own trouble (5xx) is a warning, at most once a minute per code (`warnings`).

    Re-raises what is not an error answer (an HTTP redirect; cancellation is not an
    Exception and never gets here)."""
    if isinstance(exc, BridgeError):
        if exc.status >= 500:
            warnings.warning(
                exc.code,
                f"{request.method} {request.path} -> {exc.status} {exc.code}: {exc.message}",
            )
        return handlers.error_response(exc.status, exc.message, exc.code, exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        code = _CODES.get(exc.status, exc.reason.lower().replace(" ", "_"))
        return handlers.error_response(exc.status, _message_for(exc, request), code, headers)
    if isinstance(exc, ConnectionResetError):
        # The client went away mid-request; nothing to answer, nothing was stored.
        log.debug("client disconnected during %s %s", request.method, request.path)
        return handlers.error_response(400, "the connection was lost", "connection_lost")
    log.error("bug handling %s %s", request.method, request.path, exc_info=exc)
    return handlers.error_response(500, "internal error", "internal")


def _message_for(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"no route {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed here"
    if exc.status == 413:
        return f"the body is larger than the {request.app[CONFIG].max_body_bytes}-byte limit"
    return exc.reason
