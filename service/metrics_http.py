"""Prometheus metrics over HTTP for `serve core` (which has no HTTP port of its own),
and the bearer-token check both halves share (INLET_METRICS_TOKEN).

A small aiohttp app rather than prometheus_client's WSGI thread: one event loop, one
token check, and the same JSON error shape as every other Inlet answer.
"""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.metrics import exposition

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="inlet-metrics"'}
TOKEN_MISSING = "/metrics needs `Authorization: Bearer <INLET_METRICS_TOKEN>`"


def token_accepted(authorization: str | None, token: str | None) -> bool:
    """Whether a request with this Authorization header may read the metrics: always
    without a token; with one, only `Bearer <token>` (compared in constant time, so the
    time taken does not tell how much of a guess was right)."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics_app(registry: CollectorRegistry, token: str | None) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        if not token_accepted(request.headers.get("Authorization"), token):
            body = orjson.dumps({"message": TOKEN_MISSING, "code": "invalid_metrics_token"})
            return web.Response(
                status=401, body=body, content_type="application/json", headers=BEARER_CHALLENGE
            )
        return web.Response(
            body=generate_latest(exposition(registry)),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def start_metrics_server(
    registry: CollectorRegistry, host: str, port: int, token: str | None
) -> tuple[web.AppRunner, int]:
    """Serve GET /metrics on host:port (0: a free port); the runner and the bound port."""
    runner = web.AppRunner(metrics_app(registry, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
