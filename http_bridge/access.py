"""What the edge middleware does for every request: request id, access log line, metrics.

Every request gets an id: the caller's `X-Request-Id` when it is sane (a proxy in
front may have set it), else a new one. It is echoed in the response's
`X-Request-Id`, set in `service.logs.REQUEST_ID` for every line logged while the
request is handled, and sent to the core with the batch that carries the event.

The log line names the route, status, duration, client (see forwarded.py), the
`messageId`, the account and the error `code` where there is one; never the
Authorization header or the body. The core logs rejected events (and, at DEBUG,
every event) with the account id, key id and type under the same request id.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from http_bridge.forwarded import Forwarding
from http_bridge.metrics import BridgeMetrics, RouteMetrics
from http_bridge.recorder import ACCOUNT
from service.logs import log_fields

log = logging.getLogger("inlet.access")
#: Where aiohttp logs requests it could not parse.
AIOHTTP_SERVER_LOG: Final = "aiohttp.server"

MESSAGE_ID: Final = web.ResponseKey("message_id", str)
ERROR_CODE: Final = web.ResponseKey("error_code", str)

#: The `Server` header: aiohttp's default names the Python and aiohttp versions, which
#: security scanners report as a finding and which tell an attacker what to try.
SERVER: Final = "inlet"

# Probes and scrapes arrive every few seconds: logged at DEBUG, not INFO.
QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})


class AccessLog:
    """Stamps, counts, times and logs every answered request of one application.

    What it needs is handed over once, at start, rather than looked up in the
    application per request: on the hot path each lookup is a Python call."""

    def __init__(self, metrics: BridgeMetrics, forwarding: Forwarding, errors_only: bool) -> None:
        """`errors_only`: INFO lines only for answers of 400 and up (INLET_ACCESS_LOG)."""
        self._metrics = metrics
        self._forwarding = forwarding
        self._errors_only = errors_only

    def finish(
        self, request: web.Request, response: web.StreamResponse, request_id: str, started: float
    ) -> None:
        """Stamp the request id on `response`, count and time it, log its line."""
        headers = response.headers
        headers["X-Request-Id"] = request_id
        headers["Server"] = SERVER
        elapsed = time.perf_counter() - started
        route = self._route(request)
        route.count(response.status)
        route.latency.observe(elapsed)
        code = response.get(ERROR_CODE)
        if code:
            self._metrics.error(code)
        self._log(request, response, route, elapsed)

    def _route(self, request: web.Request) -> RouteMetrics:
        resource = request.match_info.route.resource
        if resource is None:  # no route matched: 404, or 405 on a known path
            return self._metrics.unmatched
        return self._metrics.route(resource.canonical)

    def _log(
        self,
        request: web.Request,
        response: web.StreamResponse,
        route: RouteMetrics,
        elapsed: float,
    ) -> None:
        status = response.status
        quiet = route.name in QUIET_ROUTES or (status < 400 and self._errors_only)
        level = logging.DEBUG if quiet else logging.INFO
        if not log.isEnabledFor(level):
            return
        client = self._forwarding.client_of(request)
        fields: dict[str, object] = {
            "method": request.method,
            "route": route.name,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "client": client.address,
            "scheme": client.scheme,
        }
        message_id = response.get(MESSAGE_ID)
        if message_id:
            fields["messageId"] = message_id
        account = request.get(ACCOUNT)  # the core's answer names the key's account
        if account:
            fields["account"] = account
        code = response.get(ERROR_CODE)
        if code:
            fields["code"] = code
        log_fields(log, level, f"{request.method} {route.name} {status}", fields)


class MalformedRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (bad header bytes, chunking or request
    line: scanners, broken proxies; never Segment) with its own plain-text 400 and closes
    the connection, and logs it as an ERROR with a traceback that quotes the offending
    line, which may be an Authorization header. It is the client's mistake, not
    Inlet's trouble: one WARNING line with the kind of error, and no quoted bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and record.levelno > logging.WARNING:
            kind = str(error.message).split("\n", 1)[0].rstrip(": ")
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "malformed HTTP request from %s, answered 400: %s"
            record.args = (*(record.args or ("an unknown client",)), kind)
            record.exc_info = record.exc_text = None
        return True


def quiet_malformed_requests() -> None:
    """Install `MalformedRequests` on aiohttp's server logger, once per process."""
    logger = logging.getLogger(AIOHTTP_SERVER_LOG)
    if not any(isinstance(f, MalformedRequests) for f in logger.filters):
        logger.addFilter(MalformedRequests())
