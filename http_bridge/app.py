"""The bridge's aiohttp application: routes, JSON errors, the core channel's lifecycle."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from http_bridge import client_metrics, debugger, handlers, sdk
from http_bridge.access import AccessLog
from http_bridge.app_keys import BATCHER, CONFIG, CORE, DRAIN, RECORDER, VIEWERS
from http_bridge.batcher import BATCH_TAGS, Batcher
from http_bridge.config import BridgeConfig
from http_bridge.core_client import Core, GrpcCore
from http_bridge.cors import preflight
from http_bridge.drain import Drain
from http_bridge.edge import edge
from http_bridge.forwarded import Forwarding
from http_bridge.metrics import METRICS, BridgeMetrics, metrics_endpoint
from http_bridge.recorder import Recorder
from http_bridge.sdk_routes import sdk_client_metrics, sdk_handler
from http_bridge.siblings import SIBLINGS, Siblings
from service.handoff import Submission, Verdict
from service.logs import REQUEST_ID, call_request_id
from service.metrics import SAMPLER
from service.worker import WorkerContext

#: The ingest routes the debugger shows (not their CORS preflights, which carry no
#: event, nor analytics.js's client metrics, which are no event).
RECORDED_PATHS = ("/segment", "/v1/")
UNRECORDED_PATHS = frozenset({client_metrics.PATH})

CoreFactory = Callable[[BridgeConfig], Core]
Send = Callable[[list[Submission]], Awaitable[list[Verdict]]]


def observed(core: Core, metrics: BridgeMetrics) -> Send:
    """`core.ingest_batch`, timed (the gRPC hop) and counted, with the batch's request ids."""
    ok, error, sizes = metrics.core_call_ok, metrics.core_call_error, metrics.batch_size

    async def send(items: list[Submission]) -> list[Verdict]:
        started = time.perf_counter()
        request_ids = BATCH_TAGS.get()
        # This batch task inherited the id of whichever request dispatched it; lines
        # about the whole call name all of its requests instead.
        REQUEST_ID.set(call_request_id(request_ids))
        try:
            results = await core.ingest_batch(items, request_ids)
        except BaseException:
            error.observe(time.perf_counter() - started)
            raise
        ok.observe(time.perf_counter() - started)
        sizes.observe(len(items))
        return results

    return send


def core_connection(factory: CoreFactory) -> Callable[[web.Application], Any]:
    """The cleanup context that connects to the core at startup and disconnects last."""

    @contextlib.asynccontextmanager
    async def connection(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        core = factory(config)
        app[CORE] = core
        app[BATCHER] = batcher = Batcher(
            observed(core, app[METRICS]),
            max_items=config.max_batch_items,
            max_bytes=config.max_batch_bytes,
            max_inflight=config.max_inflight_batches,
            max_pending=config.max_pending,
            max_pending_bytes=config.max_pending_bytes,
            max_queue_delay=config.max_queue_delay_s,
            max_gather_delay=config.max_gather_delay_s,
        )
        SAMPLER.gauge(app[METRICS].pending, lambda: batcher.pending)
        try:
            yield
        finally:
            # Runs after in-flight requests finished (or were cut off past the grace):
            # answer what is still in flight, then close the connection.
            await app[BATCHER].drain()
            await core.close()

    return connection


def ring_for_siblings(recorder: Recorder, path: Path) -> Callable[[web.Application], Any]:
    """The cleanup context serving this worker's debugger ring to its siblings."""

    @contextlib.asynccontextmanager
    async def ring(app: web.Application) -> AsyncIterator[None]:
        runner = await debugger.serve_ring(recorder, path)
        try:
            yield
        finally:
            await runner.cleanup()
            await app[SIBLINGS].close()

    return ring


def create_app(
    config: BridgeConfig,
    core: CoreFactory = GrpcCore,
    registry: CollectorRegistry | None = None,
    worker: WorkerContext | None = None,
) -> web.Application:
    """The bridge application; `core` makes its connection to the core (gRPC by default).

    Its metrics go to `registry` (a new one by default); `inlet serve` passes the one the
    core uses too, so /metrics shows both. `worker`: as one of `inlet serve --workers`,
    the debugger shows the sibling workers' requests too (siblings.py)."""
    recorder = Recorder(config.debugger_size, worker.index if worker is not None else 0)
    metrics = BridgeMetrics(registry or CollectorRegistry())
    access_log = AccessLog(
        metrics, Forwarding(config.trusted_proxies), errors_only=config.access_log == "errors"
    )
    drain = Drain()
    edge_middleware = edge(
        access_log,
        metrics,
        recorder if config.debugger_size else None,
        RECORDED_PATHS,
        UNRECORDED_PATHS,
        drain,
    )
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[edge_middleware])
    app[CONFIG] = config
    app[RECORDER] = recorder
    app[VIEWERS] = {}
    app[METRICS] = metrics
    app[DRAIN] = drain
    if worker is not None:
        app[SIBLINGS] = Siblings({i: worker.debugger_path(i) for i in worker.siblings})
        app.cleanup_ctx.append(ring_for_siblings(recorder, worker.debugger_path(worker.index)))
    app.cleanup_ctx.append(core_connection(core))
    app.router.add_post("/segment", handlers.segment_event, expect_handler=handlers.expect)
    # Segment's Tracking API, for apps that use Segment's SDKs with their host set here.
    for route in (*sdk.SINGLE_ROUTES, *sdk.BATCH_ROUTES):
        app.router.add_post(route, sdk_handler(route), expect_handler=handlers.expect)
        app.router.add_route("OPTIONS", route, preflight)  # browsers (analytics.js)
    app.router.add_post(client_metrics.PATH, sdk_client_metrics, expect_handler=handlers.expect)
    app.router.add_route("OPTIONS", client_metrics.PATH, preflight)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    debugger.add_routes(app)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
