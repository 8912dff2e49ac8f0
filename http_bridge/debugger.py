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

With `inlet serve --workers N` each worker keeps its own ring; the worker that answers
asks its siblings for theirs (http_bridge/siblings.py) and merges them by id.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from http_bridge import sdk
from http_bridge.app_keys import CORE, RECORDER, VIEWERS
from http_bridge.errors import BadRequest, Forbidden, NotFound
from http_bridge.handlers import json_response
from http_bridge.recorder import Exchange, Recorder, worker_of
from http_bridge.segment import key_from_authorization
from http_bridge.siblings import ALL, SIBLINGS

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


def listing(
    recorder: Recorder,
    viewer: str | None,
    after: int = 0,
    before: int | None = None,
    account: str | None = None,
    kind: str | None = None,
    outcome: str | None = None,
) -> list[dict[str, Any]]:
    """Summaries of the ring's exchanges with `after < id < before` that `viewer` may
    see and the filters keep, newest first, at most _MAX_LISTED."""
    listed: list[dict[str, Any]] = []
    for exchange in recorder.newest_first():
        if exchange.id <= after or len(listed) >= _MAX_LISTED:
            break
        if before is not None and exchange.id >= before:
            continue
        if not _visible(exchange, viewer) or (account and exchange.account != account):
            continue
        if outcome and exchange.outcome != outcome:
            continue
        summary = _summary(exchange)
        if kind and summary["type"] != kind:
            continue
        listed.append(summary)
    return listed


def detail(recorder: Recorder, id: int, viewer: str | None) -> dict[str, Any] | None:
    """One exchange as the debugger shows it, if in the ring and `viewer` may see it."""
    found = recorder.get(id)
    if found is None or not _visible(found, viewer):
        return None
    return {
        **_summary(found),
        "request": {
            "method": found.method,
            "path": found.path,
            "headers": [list(h) for h in found.headers],
            "body": found.body.decode("utf-8", "replace"),
            "bodyTruncated": found.body_truncated,
        },
        "response": {"status": found.status, "body": found.response.decode("utf-8", "replace")},
    }


async def exchanges(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise BadRequest("`after` must be an integer", "invalid_query") from None
    account, kind = request.query.get("account"), request.query.get("type")
    outcome = request.query.get("outcome")
    recorder = request.app[RECORDER]
    siblings = request.app.get(SIBLINGS)
    if siblings is None:
        listed = listing(recorder, viewer, after, None, account, kind, outcome)
    else:
        # Every worker's ring up to one moment: an exchange a sibling records while
        # this gathers has a later id than all listed, so `after` finds it next time.
        before = recorder.id_before(time.time_ns())
        listed = listing(recorder, viewer, after, before, account, kind, outcome)
        listed += await siblings.listing(viewer, after, before, account, kind, outcome)
        listed.sort(key=lambda summary: -int(summary["id"]))
        del listed[_MAX_LISTED:]
    return json_response(200, {"exchanges": listed, "viewer": viewer or "*"})


async def exchange(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    try:
        id = int(request.match_info["id"])
    except ValueError:
        id = None
    found = None
    if id is not None:
        recorder = request.app[RECORDER]
        siblings = request.app.get(SIBLINGS)
        if siblings is None or worker_of(id) == recorder.worker:
            found = detail(recorder, id, viewer)
        else:
            found = await siblings.detail(worker_of(id), id, viewer)
    if found is None:
        raise NotFound("no such request among the recent ones", "not_found")
    return json_response(200, found)


def _queried_viewer(request: web.Request) -> str | None:
    viewer = request.query.get("viewer", ALL)
    return None if viewer == ALL else viewer


def _int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    return None if value is None else int(value)


async def _ring_listing(request: web.Request) -> web.Response:
    listed = listing(
        request.app[RECORDER],
        _queried_viewer(request),
        after=_int(request, "after") or 0,
        before=_int(request, "before"),
        account=request.query.get("account"),
        kind=request.query.get("type"),
        outcome=request.query.get("outcome"),
    )
    return web.Response(body=orjson.dumps(listed), content_type="application/json")


async def _ring_detail(request: web.Request) -> web.Response:
    found = detail(request.app[RECORDER], int(request.match_info["id"]), _queried_viewer(request))
    if found is None:
        raise web.HTTPNotFound()
    return web.Response(body=orjson.dumps(found), content_type="application/json")


async def serve_ring(recorder: Recorder, path: Path) -> web.AppRunner:
    """Serve this worker's ring to its siblings (siblings.py) on the Unix socket `path`:
    the viewer they name is trusted, so only the user running Inlet may reach it."""
    app = web.Application()
    app[RECORDER] = recorder
    app.router.add_get("/exchanges", _ring_listing)
    app.router.add_get("/exchanges/{id}", _ring_detail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    path.unlink(missing_ok=True)  # the socket of the worker this one replaces
    await web.UnixSite(runner, str(path)).start()
    return runner


def add_routes(app: web.Application) -> None:
    app.router.add_get("/debugger", page)
    app.router.add_get("/debugger/api/exchanges", exchanges)
    app.router.add_get("/debugger/api/exchanges/{id}", exchange)
