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

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

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
    """One recorded exchange as the debugger shows it (built when it is read)."""

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


# What the ring holds per exchange: plain values in a tuple, referenced as they came
# (the body read, the parsed headers copied once), so that recording costs about one
# tuple per request; decoding and slicing happen only when someone looks.
_Entry = tuple[int, float, str, str, CIMultiDict[str], bytes, int, bytes, float, str]


def _redacted_authorization(value: str) -> str:
    key_id = key_id_of(value)
    return f"<redacted: key {key_id}>" if key_id else "<redacted>"


def _without_secrets(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """A copy of the headers whose Authorization value (all of them, if it came more than
    once) is replaced by the key's id: it never enters the ring. A copy of the parsed
    headers costs a tenth of rebuilding the raw header pairs (bench/instructions.py:
    ~25k instructions a request for that)."""
    copy = headers.copy()
    value = copy.get(hdrs.AUTHORIZATION)
    if value is not None:
        copy[hdrs.AUTHORIZATION] = _redacted_authorization(value)  # replaces every one
    return copy


def _exchange(entry: _Entry) -> Exchange:
    id, at, method, path, headers, body, status, answer, duration_ms, account = entry
    return Exchange(
        id=id,
        at=at,
        method=method,
        path=path,
        headers=tuple(headers.items()),
        body=body[:MAX_BODY],
        body_truncated=len(body) > MAX_BODY,
        status=status,
        response=answer[:MAX_BODY],
        duration_ms=duration_ms,
        account=account,
    )


class Recorder:
    def __init__(self, size: int) -> None:
        self._ring: deque[_Entry] = deque(maxlen=size)
        self._ids = itertools.count(1)

    def add(self, request: web.Request, response: web.StreamResponse, started: float) -> None:
        """Record one exchange; `started` is its `time.perf_counter()` at arrival."""
        body = request.get(BODY, b"")
        answer = response.body if isinstance(response, web.Response) else b""
        self._ring.append(
            (
                next(self._ids),
                time.time(),
                request.method,
                request.path,
                _without_secrets(request.headers),
                # A body past the cap is cut now: the ring must not hold megabytes.
                body if len(body) <= MAX_BODY else body[: MAX_BODY + 1],
                response.status,
                answer if isinstance(answer, bytes) else b"",
                (time.perf_counter() - started) * 1000,
                request.get(ACCOUNT, ""),
            )
        )

    def newest_first(self) -> Iterator[Exchange]:
        return (_exchange(entry) for entry in reversed(self._ring))

    def get(self, id: int) -> Exchange | None:
        return next((_exchange(e) for e in self._ring if e[0] == id), None)
