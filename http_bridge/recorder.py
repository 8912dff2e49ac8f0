"""The recent-requests ring behind the event debugger (GET /debugger).

Every ingest request (webhook and SDK routes) is kept as it was received and
answered — rejected ones too, which never reach the store — in a bounded ring in
memory: at most `debugger_size` exchanges, bodies cut at `MAX_BODY` bytes, so the
ring costs a few MB at most and one append per request. Nothing is persisted.
The `Authorization` value never enters it: only the key's public id.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from http_bridge.segment import key_id_of

#: Request and response bodies are kept up to this size (the rest is dropped).
MAX_BODY: Final = 16 * 1024

BODY: Final = web.RequestKey("body", bytes)
# `"writeKey": "<key>"` (any spacing; also cut off at the end of a truncated body).
_WRITE_KEY: Final = re.compile(rb'("writeKey"\s*:\s*")[^"]*("?)')
ACCOUNT: Final = web.RequestKey("account", str)


def redact_write_keys(body: bytes) -> bytes:
    """The body with every `writeKey` value replaced (SDKs put the API key there)."""
    if b"writeKey" not in body:
        return body
    return _WRITE_KEY.sub(rb"\1<redacted>\2", body)


@dataclass(frozen=True, slots=True)
class Exchange:
    id: int
    at: float
    method: str
    path: str
    #: Request headers as received, the Authorization value replaced by the key's id.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    body_truncated: bool
    status: int
    response: bytes
    duration_ms: float
    #: The account the key belongs to; "" when the key was not valid.
    account: str

    @property
    def outcome(self) -> str:
        if self.status < 300:
            return "duplicate" if b'"duplicate":true' in self.response else "stored"
        return "rejected" if self.status < 500 else "failed"


def _redacted(headers: web.Request) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in headers.headers.items():
        if name.lower() == "authorization":
            key_id = key_id_of(value)
            value = f"<redacted: key {key_id}>" if key_id else "<redacted>"
        out.append((name, value))
    return tuple(out)


class Recorder:
    def __init__(self, size: int) -> None:
        self._ring: deque[Exchange] = deque(maxlen=size)
        self._ids = itertools.count(1)

    def add(self, request: web.Request, response: web.StreamResponse, started: float) -> None:
        body = request.get(BODY, b"")
        answer = response.body if isinstance(response, web.Response) else b""
        self._ring.append(
            Exchange(
                id=next(self._ids),
                at=time.time(),
                method=request.method,
                path=request.path,
                headers=_redacted(request),
                body=body[:MAX_BODY],
                body_truncated=len(body) > MAX_BODY,
                status=response.status,
                response=answer[:MAX_BODY] if isinstance(answer, bytes) else b"",
                duration_ms=(time.monotonic() - started) * 1000,
                account=request.get(ACCOUNT, ""),
            )
        )

    def newest_first(self) -> Iterator[Exchange]:
        return reversed(self._ring)

    def get(self, id: int) -> Exchange | None:
        return next((e for e in self._ring if e.id == id), None)


def recording(recorder: Recorder, paths: tuple[str, ...]) -> Middleware:
    """Middleware that records the exchanges of requests under `paths` (outermost, so it
    sees the answer the client got, errors included)."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(paths):
            return await handler(request)
        started = time.monotonic()
        response = await handler(request)
        recorder.add(request, response, started)
        return response

    return record
