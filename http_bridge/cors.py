"""CORS for the SDK routes: analytics.js posts to /v1/* from customers' web pages.

It sends `text/plain`, but since 1.84 also the write key as `Authorization: Basic` and,
on a retry, `X-Retry-Count`: headers that make the browser ask first (`OPTIONS`), and
that the preflight must name, or the POST is never sent. A browser also hides every
answer from the page unless it carries `Access-Control-Allow-Origin`; analytics.js
would then count each delivery as failed and retry it forever. Segment's own Tracking
API answers `*` (no cookies are involved: the write key travels in the body or in
`Authorization`). The webhook and the admin routes get no CORS headers: browsers have
no business calling them.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

SDK_PREFIX: Final = "/v1/"
_ALLOW: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Retry-After, X-Request-Id",
}
_PREFLIGHT: Final = {
    **_ALLOW,
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    # `*` does not cover Authorization: it must be named.
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding, X-Retry-Count",
    "Access-Control-Max-Age": "86400",
}


def allow(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer on /v1/* (errors too) may be read by the page that asked."""
    if request.path.startswith(SDK_PREFIX):
        response.headers.update(_ALLOW)


async def preflight(request: web.Request) -> web.Response:
    """OPTIONS /v1/*: what a browser asks before a POST with `Authorization` or JSON."""
    return web.Response(status=204, headers=_PREFLIGHT)
