"""The bridge's Prometheus metrics and the `/metrics` route.

Labels hold only what Inlet defines: route templates (never the raw path: a scan of
random URLs must not create a series per URL), status codes, outcomes. Never an API
key, account, user or event field.

The request path is hot (thousands of requests a second on two cores), so labelled
children are bound once and kept, and the in-flight count is a plain integer that
Prometheus reads only when it scrapes.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics import Counter, Gauge, Histogram

from http_bridge import client_metrics
from http_bridge.app_keys import CONFIG
from http_bridge.errors import Unauthorized
from service.metrics import SAMPLER, exposition
from service.metrics_http import BEARER_CHALLENGE, TOKEN_MISSING, token_accepted

# Seconds. Segment gives a destination 5 s; Inlet answers 503 at 4 s.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    4.0,
    5.0,
    10.0,
)
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

UNMATCHED: Final = "unmatched"
"""The route label of requests no route matched (404, and 405 on a known path)."""


class RouteMetrics:
    """The series of one route, bound once."""

    __slots__ = ("_by_status", "_requests", "latency", "name")

    def __init__(self, route: str, requests: Counter, latency: Histogram) -> None:
        self.name = route
        self._requests = requests
        self._by_status: dict[int, Counter] = {}
        self.latency = latency.labels(route)

    def count(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:  # a status is bounded (100-599), so this dict stays small
            child = self._by_status[status] = self._requests.labels(self.name, str(status))
        child.inc()


class BridgeMetrics:
    """One per bridge application, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._requests = Counter(
            "inlet_http_requests",
            "HTTP requests answered, by route template and status code.",
            ["route", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "inlet_http_request_duration_seconds",
            "Time from a request's headers to its answer, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = 0
        in_flight = Gauge(
            "inlet_http_requests_in_flight",
            "HTTP requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        SAMPLER.gauge(in_flight, lambda: self.in_flight)
        core_calls = Histogram(
            "inlet_core_call_duration_seconds",
            "Duration of one batch call from the bridge to the core (the gRPC hop, or the "
            "in-process call in `inlet serve`), by result (ok or error).",
            ["result"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.core_call_ok = core_calls.labels("ok")
        self.core_call_error = core_calls.labels("error")
        self.batch_size = Histogram(
            "inlet_core_call_events",
            "Events per batch call from the bridge to the core.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.pending = Gauge(
            "inlet_bridge_queued_requests",
            "Requests waiting for a batch call to the core.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._errors = Counter(
            "inlet_http_errors",
            "Error answers (4xx, 5xx) by their `code`: which of the bridge's own 503s "
            "(core_unavailable, core_timeout, overloaded, shutting_down), the core's "
            "refusals, or the clients' mistakes.",
            ["code"],
            registry=registry,
        )
        self._by_code: dict[str, Counter] = {}
        received = Counter(
            "inlet_sdk_client_metrics",
            "analytics.js client metrics received on /v1/m (counted, never stored), by "
            "metric name: analytics.js's own names, `other` for any other.",
            ["metric"],
            registry=registry,
        )
        # Bound up front: every series exists (at 0) from the start.
        self.client_metrics = {
            name: received.labels(name) for name in (*client_metrics.NAMES, client_metrics.OTHER)
        }
        self.settings_dropped = Counter(
            "inlet_settings_dropped",
            "Events stored without their X-Segment-Settings: base64 of `{...}` that is not "
            "JSON (never sent by Segment).",
            registry=registry,
        )
        self._routes: dict[str, RouteMetrics] = {}
        self.unmatched = self.route(UNMATCHED)

    def error(self, code: str) -> None:
        """Count an error answer. Codes are Inlet's own and aiohttp's reasons: bounded."""
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._errors.labels(code)
        child.inc()

    def route(self, template: str) -> RouteMetrics:
        """The bound series of a route template (registered routes only)."""
        found = self._routes.get(template)
        if found is None:
            found = self._routes[template] = RouteMetrics(template, self._requests, self._latency)
        return found


METRICS: Final = web.AppKey("metrics", BridgeMetrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text format of the process's registry; with a metrics
    token configured, only for a scraper that presents it (Prometheus: `authorization`
    with `credentials`)."""
    if not token_accepted(request.headers.get("Authorization"), request.app[CONFIG].metrics_token):
        raise Unauthorized(TOKEN_MISSING, "invalid_metrics_token", BEARER_CHALLENGE)
    body = generate_latest(exposition(request.app[METRICS].registry))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
