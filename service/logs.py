"""Structured logs: one JSON object a line, or readable text on a terminal.

Every line logged while a request is handled carries its request id. The id lives
in a context variable, so it follows the request through awaits, into the batch
call to the core and (in `inlet serve`, where core and bridge share a process) into
the core's own lines. The bridge imports this module too, which is why it is a leaf
with no dependency on the rest of the core.

Fields beyond the message go in `extra={"fields": {...}}`. Nothing here filters
secrets: callers never pass keys, Authorization values or event contents.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import re
import sys
from typing import Any, Final, TextIO

import orjson

REQUEST_ID: Final = contextvars.ContextVar[str | None]("inlet_request_id", default=None)

MAX_REQUEST_ID: Final = 64
# Letters, digits and a few separators: safe in a log line, a header and gRPC
# metadata, and no `,`, which joins the ids of a batch.
_SANE_ID: Final = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID}}}")


def new_request_id() -> str:
    return os.urandom(8).hex()


def sane_request_id(value: str | None) -> str:
    """`value` when it is a usable id (bounded length, safe characters), else a new id.

    Proxies and load balancers set `X-Request-Id`; honouring theirs lets an operator
    follow one request across them. A hostile value must not reach the logs.
    """
    if value is not None and _SANE_ID.fullmatch(value):
        return value
    return new_request_id()


def split_request_ids(value: str | None) -> tuple[str, ...]:
    """The ids of an `x-request-id` gRPC metadata value: one per item of a batch call
    from the bridge (comma-separated, item order), or one for the whole call."""
    if not value:
        return ()
    return tuple(sane_request_id(part) for part in value.split(","))


def call_request_id(ids: tuple[str, ...]) -> str:
    """One id naming a call: its only request's, `first+N` for a batch, else a new one."""
    if not ids or not all(ids):
        return new_request_id()
    return ids[0] if len(ids) == 1 else f"{ids[0]}+{len(ids) - 1}"


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _iso(created: float) -> str:
    # Formatting a datetime costs ~1.5 µs, paid per line: format each second once.
    second = int(created)
    if _second[0] != second:
        moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
        _second[:] = [second, moment.strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id"?, ...fields, "error"?}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ... [request id]`, for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_iso(record.created), record.levelname, f"{record.name}:", record.getMessage()]
        fields = getattr(record, "fields", None)
        if fields:
            parts.extend(f"{key}={value}" for key, value in fields.items())
        request_id = REQUEST_ID.get()
        if request_id is not None:
            parts.append(f"[{request_id}]")
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(level: str = "INFO", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Send every logger's records to `stream` (stderr): JSON unless it is a terminal."""
    # Lines go out per request, so skip what the formatters never show (the Logging
    # HOWTO's "Optimization"): the caller's file and line, thread, process, task.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    vars(logging)["logAsyncioTasks"] = False  # Python 3.12+; harmless before
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
