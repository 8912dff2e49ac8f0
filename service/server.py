"""Assembly and lifecycle of the gRPC core: store, servicers, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import urllib.parse
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from inlet.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
)
from service.admin_servicer import AdminServicer
from service.auth import Authenticator
from service.config import CoreConfig, open_configured_store
from service.errors import StoreUnavailable
from service.event_servicer import EventServicer
from service.feed import Feed
from service.grpc_tls import ReloadableCredentials
from service.ingest import Ingestor
from service.interceptors import AccessInterceptor, DecodeErrorInterceptor
from service.maintenance import MaintenanceMode
from service.metrics import CoreMetrics
from service.metrics_http import start_metrics_server
from service.profile_servicer import ProfileServicer
from service.ratelimit import RateLimiter, SharedBuckets
from service.retention import Retention
from service.store import SqliteStore, Store
from service.worker import Notices, WorkerContext

log = logging.getLogger(__name__)

EVENT_SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
PROFILE_SERVICE = profiles_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name
SERVICES = (EVENT_SERVICE, ADMIN_SERVICE, PROFILE_SERVICE)


def server_options(config: CoreConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Bridges ping every 30 s; the 5-minute default would answer them with
        # GOAWAY "too_many_pings".
        ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # grpc sets SO_REUSEPORT by default: a second core on the same port would
        # start "successfully" and split traffic with the first. Fail instead, unless
        # sharing is meant (the workers of `inlet serve --workers`).
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        # A batch call from the bridge names each of its requests in `x-request-id`
        # (up to 32 KiB); the default 8 KiB metadata limit would refuse it.
        ("grpc.max_metadata_size", 64 * 1024),
        ("grpc.absolute_max_metadata_size", 64 * 1024),
    ]


def server_credentials(config: CoreConfig) -> ReloadableCredentials | None:
    """TLS for the gRPC port; with a client CA, callers must present a certificate."""
    if config.grpc_tls_cert is None or config.grpc_tls_key is None:
        return None
    return ReloadableCredentials(config.grpc_tls_cert, config.grpc_tls_key, config.grpc_client_ca)


@dataclass
class CoreServer:
    """A running core. `stop()` drains it: NOT_SERVING, in-flight RPCs finish, store closes."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    store: Store
    ingestor: Ingestor
    port: int
    config: CoreConfig
    feed: Feed
    maintenance: MaintenanceMode
    auth: Authenticator
    background: list[asyncio.Task[None]]
    metrics: CoreMetrics
    metrics_server: web.AppRunner | None = None
    metrics_port: int | None = None
    tls: ReloadableCredentials | None = None
    serving: bool = True

    def reload_tls(self) -> bool:
        """Re-read the gRPC certificate files (on SIGHUP): new connections get the new
        certificate, open ones keep theirs; bad files keep the old one (False)."""
        if self.tls is None:
            log.info("no gRPC TLS certificate to reload: the core serves plain gRPC")
            return False
        return self.tls.reload()

    async def stop(self, grace: float | None = None) -> None:
        # Health first, so load balancers and bridges' /readyz stop routing here;
        # then end the (endless) Subscribe streams, which resume elsewhere; then
        # refuse new RPCs and give in-flight ones the grace period.
        self.serving = False
        await self.health.enter_graceful_shutdown()
        self.feed.close()
        await self.server.stop(self.config.shutdown_grace_s if grace is None else grace)
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.store.close()
        if self.metrics_server is not None:
            await self.metrics_server.cleanup()


async def start_core(
    config: CoreConfig,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    worker: WorkerContext | None = None,
) -> CoreServer:
    """Open the store and start serving; return once the port is bound.

    Metrics go to `registry` (a new one by default): `inlet serve` shares one with the
    bridge, whose /metrics then shows both. `worker`: as one of `inlet serve --workers`,
    the core shares its rate-limit buckets with its siblings, tells them of commits and
    of key and switch changes, and hears theirs (service/worker.py)."""
    metrics = CoreMetrics(registry or CollectorRegistry())
    store = store or open_configured_store(config)
    await store.open()
    if isinstance(store, SqliteStore):
        metrics.watch_checkpoints(store.checkpointer)
        if store.eraser is not None:
            metrics.watch_sqlite_eraser(store.eraser)
    elif (eraser := getattr(store, "eraser", None)) is not None:  # PostgreSQL's
        metrics.watch_eraser(eraser)
    auth = Authenticator(store, ttl_s=config.key_cache_ttl_s)
    limiter = None
    if config.rate_limit_per_key:
        shared = SharedBuckets(worker.rate_limit_path) if worker is not None else None
        limiter = RateLimiter(config.rate_limit_per_key, buckets=shared)
    maintenance = MaintenanceMode(store, config.switch_refresh_s)
    await maintenance.refresh()
    ingestor = Ingestor(
        store,
        auth,
        config.supported_types,
        limiter,
        config.max_inflight_events,
        maintenance,
        metrics=metrics,
        log_traits=config.log_traits,
    )
    feed = Feed(store, poll_s=config.feed_poll_s or store.feed_poll_s, metrics=metrics)

    server = grpc.aio.server(
        interceptors=[AccessInterceptor(metrics), DecodeErrorInterceptor()],
        options=server_options(config),
    )
    events_pb2_grpc.add_EventServiceServicer_to_server(
        EventServicer(ingestor, config, store, auth, feed), server
    )
    profiles_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(store, auth), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(store, auth, maintenance), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        credentials = server_credentials(config)
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials.credentials)
    except (RuntimeError, OSError) as exc:
        await store.close()
        raise OSError(f"cannot listen on {config.listen} for gRPC: {exc}") from None
    metrics_server, metrics_port = None, None
    if config.metrics_port is not None:
        host = config.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"
        try:
            metrics_server, metrics_port = await start_metrics_server(
                metrics.registry, host, config.metrics_port, config.metrics_token
            )
        except OSError:
            await store.close()
            raise
    await server.start()
    for name in SERVICES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    security = ""
    if credentials is not None:
        security = ", TLS with client certificates" if config.grpc_client_ca else ", TLS"
    log.info(
        "core listening on %s (gRPC%s), store %s",
        _with_port(config.listen, port),
        security,
        redact(config.database),
    )
    if metrics_port is not None:
        log.info("core metrics on http://%s:%d/metrics", host, metrics_port)
    background = [asyncio.create_task(maintenance.follow(), name="inlet-maintenance")]
    if worker is not None:
        background.append(_hear_siblings(Notices(worker), store, auth, maintenance))
    if config.retention_s is not None:
        retention = Retention(
            store,
            config.retention_s,
            interval_s=config.prune_interval_s,
            pruned=metrics.events_pruned,
        )
        background.append(asyncio.create_task(retention.follow(), name="inlet-retention"))
    return CoreServer(
        server,
        health_servicer,
        store,
        ingestor,
        port,
        config,
        feed,
        maintenance,
        auth,
        background,
        metrics,
        metrics_server,
        metrics_port,
        credentials,
    )


def _hear_siblings(
    notices: Notices, store: Store, auth: Authenticator, maintenance: MaintenanceMode
) -> asyncio.Task[None]:
    """Tell the sibling workers what happens here, and act on what they tell (a task
    that stops hearing them when cancelled at shutdown)."""
    store.commits.relay = notices.commit
    auth.announce = notices.key
    maintenance.announce = notices.maintenance
    refreshes: set[asyncio.Task[None]] = set()

    async def refresh() -> None:
        with contextlib.suppress(StoreUnavailable):  # the 2 s refresh will see it
            await maintenance.refresh()

    def refresh_maintenance() -> None:
        task = asyncio.create_task(refresh())
        refreshes.add(task)
        task.add_done_callback(refreshes.discard)

    notices.listen(
        on_commit=store.commits.wake,
        on_key=lambda key_id: auth.invalidate(key_id, announce=False),
        on_maintenance=refresh_maintenance,
    )

    async def hear() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            notices.close()

    return asyncio.create_task(hear(), name="inlet-sibling-notices")


def redact(database: str) -> str:
    """`database` without a password, for logs."""
    parts = urllib.parse.urlsplit(database)
    if parts.password is None:
        return database
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _with_port(listen: str, port: int) -> str:
    host, _, _ = listen.rpartition(":")
    return f"{host}:{port}"


def stop_on_signal() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (the handlers stay for the process's loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
