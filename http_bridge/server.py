"""Starting and stopping the bridge's HTTP(S) server."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from http_bridge.access import quiet_malformed_requests
from http_bridge.app import CoreFactory, create_app
from http_bridge.app_keys import CORE, DRAIN
from http_bridge.config import BridgeConfig
from http_bridge.core_client import GrpcCore
from http_bridge.drain import AFTER_GRACE_S, drain
from http_bridge.tls import reload_certificate, server_context
from service.worker import WorkerContext

log = logging.getLogger(__name__)

MAX_HEADER_BYTES: Final = 64 * 1024


def tls_context(config: BridgeConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    return server_context(config.tls_cert, config.tls_key)


@dataclass
class BridgeServer:
    runner: web.AppRunner
    port: int
    scheme: str
    config: BridgeConfig
    tls: ssl.SSLContext | None = None

    def reload_tls(self) -> bool:
        """Re-read the certificate files (on SIGHUP): new connections get the new
        certificate, open ones are untouched. False when not serving TLS or the files
        are bad (the previous certificate stays)."""
        if self.tls is None or self.config.tls_cert is None or self.config.tls_key is None:
            log.info("no TLS certificate to reload: the bridge serves plain HTTP")
            return False
        return reload_certificate(self.tls, self.config.tls_cert, self.config.tls_key)

    def reload_core_tls(self) -> bool:
        """Re-read the `--core-tls-*` files (on SIGHUP) a `serve bridge` reaches its core
        with: calls from now on use them (GrpcCore.reload_tls). False when the core is
        in this process or reached without TLS, or the files are bad."""
        core = self.runner.app.get(CORE)  # set once the app has started
        return isinstance(core, GrpcCore) and core.reload_tls()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace (drain.py), cut
        off the rest, flush the batcher, close the channel."""
        await drain(self.runner, self.runner.app[DRAIN], self.config.shutdown_grace_s)
        await self.runner.cleanup()


async def start_bridge(
    config: BridgeConfig,
    core: CoreFactory = GrpcCore,
    registry: CollectorRegistry | None = None,
    worker: WorkerContext | None = None,
) -> BridgeServer:
    """Serve; `worker`: as one of `inlet serve --workers`, on the port its siblings
    share (SO_REUSEPORT: the kernel spreads new connections over them)."""
    context = tls_context(config)
    quiet_malformed_requests()
    runner = web.AppRunner(
        create_app(config, core, registry, worker),
        access_log=None,
        # The grace is the drain's (BridgeServer.stop); aiohttp's shutdown only cuts off
        # what is left after it.
        shutdown_timeout=AFTER_GRACE_S,
        # aiohttp's default 8190-byte header limit would answer a large (but valid)
        # X-Segment-Settings with a 400 that Segment drops; allow 64 KiB per header.
        max_field_size=MAX_HEADER_BYTES,
        max_line_size=MAX_HEADER_BYTES,
        # aiohttp's keep-alive timer runs from the moment a connection opens (or a
        # response ends) until the next request's headers are complete; its default of
        # an hour would let trickled headers hold a connection that long.
        keepalive_timeout=config.header_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(
        runner, config.host, config.port, ssl_context=context, reuse_port=worker is not None
    )
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    scheme = "https" if context else "http"
    log.info("bridge listening on %s://%s:%d/segment", scheme, config.host, port)
    if context is None:
        log.warning(
            "serving plain HTTP: Segment delivers only over HTTPS, so put a TLS proxy in "
            "front or pass --tls-cert/--tls-key"
        )
    return BridgeServer(runner, port, scheme, config, context)
