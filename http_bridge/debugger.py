"""The event debugger: GET /debugger, a live view of the recent ingest requests.

Like the Debugger Segment shows partners, for Inlet's operators: every request to
the webhook and SDK routes as received and as answered, rejected ones included,
newest first, filterable by account, type and outcome. The page is static (no
build step); its script reads two JSON routes with the operator's key:

    GET /debugger/api/exchanges?after=ID   summaries, newest first
    GET /debugger/api/exchanges/{id}       one exchange: request and response

The key goes in `Authorization: Bearer <key>` (or Basic) and needs the `admin`
scope, which shows its own account's requests, or `operator`, which shows all
(including requests whose key was not valid). The page takes the key from its
URL fragment (`/debugger#key=...`, never sent to the server) or asks for it.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any, Final

import orjson
from aiohttp import web

from http_bridge import sdk
from http_bridge.errors import BadRequest, Forbidden, NotFound
from http_bridge.handlers import json_response
from http_bridge.keys import CORE, RECORDER, VIEWERS
from http_bridge.recorder import Exchange
from http_bridge.segment import key_from_authorization

_PAGE: Final = resources.files("http_bridge").joinpath("debugger.html").read_bytes()
_MAX_LISTED: Final = 200
_CACHE_S: Final = 5.0


async def page(request: web.Request) -> web.Response:
    return web.Response(
        body=_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


async def _viewer(request: web.Request) -> str | None:
    """The account the caller may see; None for an operator (all accounts)."""
    api_key = key_from_authorization(request.headers.get("Authorization"))
    cache = request.app[VIEWERS]  # key -> (checked at, viewer): one core call per 5 s
    cached = cache.get(api_key)
    if cached is not None and time.monotonic() - cached[0] < _CACHE_S:
        return cached[1]
    key = await request.app[CORE].whoami(api_key)
    if "operator" in key.scopes:
        viewer = None
    elif "admin" in key.scopes:
        viewer = key.account
    else:
        raise Forbidden("the debugger needs a key with the `admin` scope", "missing_scope")
    if len(cache) > 1000:
        cache.clear()
    cache[api_key] = (time.monotonic(), viewer)
    return viewer


def _summary(exchange: Exchange) -> dict[str, Any]:
    """What the list shows: parsed lazily from the recorded body, here, not per request."""
    fields: dict[str, Any] = {}
    try:
        body = orjson.loads(exchange.body)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("batch"), list):
            fields["type"] = f"batch of {len(body['batch'])}"
        else:
            # A single-event route fixes the type, whatever the body says (`/v1/t`: track).
            fields["type"] = (
                sdk.SINGLE_ROUTES.get(exchange.path)
                or body.get("type")
                or exchange.path.rsplit("/", 1)[-1]
            )
            fields["event"] = body.get("event") or body.get("name") or ""
            fields["user"] = body.get("userId") or body.get("anonymousId") or ""
            fields["messageId"] = body.get("messageId") or ""
    return {
        "id": exchange.id,
        "at": exchange.at,
        "path": exchange.path,
        "account": exchange.account,
        "status": exchange.status,
        "outcome": exchange.outcome,
        "durationMs": round(exchange.duration_ms, 2),
        "type": "",
        "event": "",
        "user": "",
        "messageId": "",
        **{k: v if isinstance(v, str) else str(v) for k, v in fields.items()},
    }


def _visible(exchange: Exchange, viewer: str | None) -> bool:
    return viewer is None or exchange.account == viewer


async def exchanges(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise BadRequest("`after` must be an integer", "invalid_query") from None
    account = request.query.get("account")
    kind = request.query.get("type")
    outcome = request.query.get("outcome")
    listed: list[dict[str, Any]] = []
    for exchange in request.app[RECORDER].newest_first():
        if exchange.id <= after or len(listed) >= _MAX_LISTED:
            break
        if not _visible(exchange, viewer) or (account and exchange.account != account):
            continue
        if outcome and exchange.outcome != outcome:
            continue
        summary = _summary(exchange)
        if kind and summary["type"] != kind:
            continue
        listed.append(summary)
    return json_response(200, {"exchanges": listed, "viewer": viewer or "*"})


async def exchange(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    try:
        found = request.app[RECORDER].get(int(request.match_info["id"]))
    except ValueError:
        found = None
    if found is None or not _visible(found, viewer):
        raise NotFound("no such request among the recent ones", "not_found")
    return json_response(
        200,
        {
            **_summary(found),
            "request": {
                "method": found.method,
                "path": found.path,
                "headers": [list(h) for h in found.headers],
                "body": found.body.decode("utf-8", "replace"),
                "bodyTruncated": found.body_truncated,
            },
            "response": {"status": found.status, "body": found.response.decode("utf-8", "replace")},
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/debugger", page)
    app.router.add_get("/debugger/api/exchanges", exchanges)
    app.router.add_get("/debugger/api/exchanges/{id}", exchange)
