"""The recent-requests ring behind the event debugger (GET /debugger).

Every ingest request (webhook and SDK routes) is kept as it was received and
answered — rejected ones too, which never reach the store — in a bounded ring in
memory: at most `debugger_size` exchanges, bodies cut at `MAX_BODY` bytes, so the
ring costs a few MB at most and one append per request. Nothing is persisted.
The `Authorization` value never enters it: only the key's public id.
"""

from __future__ import annotations

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
    #: Request headers in the order received, names as aiohttp parsed them (the usual
    #: capitalisation for well-known ones), credentials redacted (Authorization shows
    #: the key's id; Proxy-Authorization and Cookie nothing).
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
            if b'"duplicate":true' in self.response:
                return "duplicate"
            return "suppressed" if b'"suppressed":true' in self.response else "stored"
        return "rejected" if self.status < 500 else "failed"


# What the ring holds per exchange: plain values in a tuple, referenced as they came
# (the body read, the parsed headers copied once), so that recording costs about one
# tuple per request; decoding and slicing happen only when someone looks.
_Entry = tuple[int, float, str, str, CIMultiDict[str], bytes, int, bytes, float, str]


#: Headers whose values are credentials. Authorization shows the key's public id;
#: the others (a proxy's credentials, a browser's cookies on the SDK routes) nothing.
_SECRET_HEADERS: Final = (hdrs.AUTHORIZATION, hdrs.PROXY_AUTHORIZATION, hdrs.COOKIE)
_SECRET_NAMES: Final = frozenset(name.lower() for name in _SECRET_HEADERS)


def _redacted(name: str, value: str) -> str:
    if name.lower() != "authorization":
        return "<redacted>"
    key_id = key_id_of(value)
    return f"<redacted: key {key_id}>" if key_id else "<redacted>"


def _without_secrets(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """A copy of the headers with every credential value replaced (each of them, where
    one came more than once): no secret enters the ring. Copying the parsed headers (in
    C) and setting the one Authorization value costs a fraction of rebuilding the
    header pairs in Python (~5k instructions a request, bench/instructions.py); that
    is done only when a credential header is repeated, or another one is there."""
    copy = headers.copy()
    present = [name for name in _SECRET_HEADERS if name in copy]
    if not present:
        return copy
    if present == [hdrs.AUTHORIZATION] and len(copy.getall(hdrs.AUTHORIZATION)) == 1:
        copy[hdrs.AUTHORIZATION] = _redacted(hdrs.AUTHORIZATION, copy[hdrs.AUTHORIZATION])
        return copy
    return CIMultiDict(
        (name, _redacted(name, value) if name.lower() in _SECRET_NAMES else value)
        for name, value in headers.items()
    )


def _text(value: str) -> str:
    """`value` as JSON can carry it: aiohttp decodes undecodable header bytes as lone
    surrogates (surrogateescape), which orjson refuses; they are shown as `\\xNN`."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _exchange(entry: _Entry) -> Exchange:
    id, at, method, path, headers, body, status, answer, duration_ms, account = entry
    return Exchange(
        id=id,
        at=at,
        method=method,
        path=path,
        headers=tuple((_text(name), _text(value)) for name, value in headers.items()),
        body=body[:MAX_BODY],
        body_truncated=len(body) > MAX_BODY,
        status=status,
        response=answer[:MAX_BODY],
        duration_ms=duration_ms,
        account=account,
    )


#: Exchange ids count in units of 10 µs since this moment (2025-01-01 UTC).
_ID_EPOCH_NS: Final = 1_735_689_600 * 10**9
_ID_UNIT_NS: Final = 10_000
#: Ids keep the worker's number (0-63) in their low bits.
_WORKER_SLOTS: Final = 64


def worker_of(exchange_id: int) -> int:
    """The number of the worker that recorded `exchange_id` (0: no `--workers`)."""
    return exchange_id % _WORKER_SLOTS


class Recorder:
    """The ring of one process. Ids grow with the time of recording, also across the
    workers of `inlet serve --workers` (each puts its number in the low bits), so the
    debugger merges their rings by id and `after=ID` means "recorded later" for all.
    They stay below 2**53 (exact in JavaScript) until about 2069."""

    def __init__(self, size: int, worker: int = 0) -> None:
        if not 0 <= worker < _WORKER_SLOTS:
            raise ValueError(f"worker number {worker} out of 0-{_WORKER_SLOTS - 1}")
        self._ring: deque[_Entry] = deque(maxlen=size)
        self.worker = worker
        self._last = 0

    def _next_id(self) -> int:
        # The time in 10 µs units, or one more than the last when recording faster.
        now = (time.time_ns() - _ID_EPOCH_NS) // _ID_UNIT_NS
        self._last = now if now > self._last else self._last + 1
        return self._last * _WORKER_SLOTS + self.worker

    def id_before(self, at_ns: int) -> int:
        """An id below every id recorded from `at_ns` on (by any worker)."""
        return (at_ns - _ID_EPOCH_NS) // _ID_UNIT_NS * _WORKER_SLOTS

    def add(self, request: web.Request, response: web.StreamResponse, started: float) -> None:
        """Record one exchange; `started` is its `time.perf_counter()` at arrival."""
        body = request.get(BODY, b"")
        answer = response.body if isinstance(response, web.Response) else b""
        self._ring.append(
            (
                self._next_id(),
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
