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

import asyncio
import contextvars
import datetime
import itertools
import logging
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TextIO

import orjson

REQUEST_ID: Final = contextvars.ContextVar[str | None]("inlet_request_id", default=None)

MAX_REQUEST_ID: Final = 64
# Letters, digits and a few separators: safe in a log line, a header and gRPC
# metadata, and no `,`, which joins the ids of a batch.
_SANE_ID: Final = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID}}}")


# A random prefix per process and a counter: 16 hex characters like a random id,
# unique within a process and, with 32 random bits, across processes and restarts,
# without a getrandom(2) call per request.
# The counter is scrambled by a random odd multiplier (a bijection modulo 2**32), so
# ids do not show a client how many requests came before its own.
_id_prefix = os.urandom(4).hex()
_id_counter = itertools.count(1)
_id_scramble = int.from_bytes(os.urandom(4)) | 1


def _new_process() -> None:  # a forked child must not repeat its parent's ids
    global _id_prefix, _id_counter, _id_scramble
    _id_prefix, _id_counter = os.urandom(4).hex(), itertools.count(1)
    _id_scramble = int.from_bytes(os.urandom(4)) | 1


os.register_at_fork(after_in_child=_new_process)


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter) * _id_scramble & 0xFFFFFFFF:08x}"


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


# The last whole second formatted, and its text: one tuple, read and replaced whole, so
# a line formatted on another thread at the same moment never pairs one with the other's.
_second: tuple[int, str] = (-1, "")


def _iso(created: float) -> str:
    # Formatting a datetime costs ~1.5 µs, paid per line: format each second once.
    global _second
    second = int(created)
    cached = _second
    if cached[0] != second:
        moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
        cached = _second = (second, moment.strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{int((created - second) * 1000):03d}Z"


class LineFormatter(logging.Formatter):
    """A formatter whose line depends only on a record's time, level, logger, message,
    fields and error text, so `log_fields` can make it without a LogRecord.

    `worker`: the process's number among `inlet serve --workers` (0: their supervisor),
    put on every line; None for a process that is neither."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        error = self.formatException(record.exc_info) if record.exc_info else None
        fields = getattr(record, "fields", None)
        return self.line(
            record.created, record.levelname, record.name, record.getMessage(), fields, error
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any] | None,
        error: str | None = None,
    ) -> str:
        raise NotImplementedError


class JsonFormatter(LineFormatter):
    """`{"time", "level", "logger", "message", "request_id"?, ...fields, "error"?}`."""

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any] | None,
        error: str | None = None,
    ) -> str:
        line: dict[str, Any] = {
            "time": _iso(created),
            "level": level,
            "logger": logger,
            "message": message,
        }
        if self.worker is not None:
            line["worker"] = self.worker
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        if fields:
            line.update(fields)
        if error is not None:
            line["error"] = error
        return orjson.dumps(line, default=str).decode()


class TextFormatter(LineFormatter):
    """`time LEVEL logger: message key=value ... [request id]`, for people at a terminal."""

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any] | None,
        error: str | None = None,
    ) -> str:
        parts = [_iso(created), level, f"{logger}:", message]
        if self.worker is not None:
            parts.insert(1, f"w{self.worker}")
        if fields:
            parts.extend(f"{key}={value}" for key, value in fields.items())
        request_id = REQUEST_ID.get()
        if request_id is not None:
            parts.append(f"[{request_id}]")
        text = " ".join(parts)
        if error is not None:
            text += "\n" + error
        return text


class LineBatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes the lines logged on an event loop together, within
    `interval` seconds (nginx's `access_log ... flush=`, at a far shorter interval).

    Every request logs a line. Written one by one, each costs a write(2) and gives up
    the GIL around it, which the SQLite writer thread then takes: the HTTP side waits
    for it again; written once per loop turn, turns are short under load and the
    timer and write still cost ~1 % of a request (bench/instructions.py). Lines logged
    on a thread running an event loop are queued and written `interval` seconds after
    the first of them (or once `max_pending` are queued). WARNING and above, and lines
    logged where no loop runs (other threads, the CLI), are written at once, after
    what is pending, so the order is kept. `flush()` (the CLI calls it when its loop
    stops: the timer will not fire then) and `logging.shutdown()` (at exit) write
    whatever is left; a process killed outright loses what was queued: the lines of the
    last `interval`, or more if the loop was too busy to run the timer on time.
    """

    #: Past this many queued lines, write them without waiting for the timer.
    max_pending = 256

    def __init__(self, stream: TextIO, interval: float = 0.05, shared: bool = False) -> None:
        """`shared`: other processes write to the same stream (the workers of `inlet
        serve --workers` share their supervisor's stderr): lines then go out in writes
        of whole lines, each at most PIPE_BUF bytes, which the kernel never interleaves
        with another process's on a pipe (nor on a file, a terminal)."""
        super().__init__(stream)
        self.interval = interval
        self._shared_fd = stream.fileno() if shared else None
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's own policy for a bad record
            self.handleError(record)
            return
        self.add_line(line, record.levelno)

    def add_line(self, line: str, level: int) -> None:
        """Queue (or write) one formatted line of a record at `level`."""
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            self._pending.append(line)
            if (
                level < logging.WARNING
                and len(self._pending) < self.max_pending
                and self._flush_later()
            ):
                return
        self.flush()  # never raises: a failing stream must not fail the caller

    def _flush_later(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._flush_on is None:
            loop.call_later(self.interval, self.flush)
            self._flush_on = loop
        return self._flush_on is loop

    def flush(self) -> None:
        """Write what is pending. A stream that fails (a full disk, a log collector gone:
        EPIPE) is reported as logging reports a failed record and the lines are dropped;
        it never raises, neither into the code that logged nor into the event loop."""
        self.acquire()
        try:
            self._flush_on = None
            text = "\n".join(self._pending) + "\n" if self._pending else ""
            self._pending.clear()
            try:
                if text and self._shared_fd is not None:
                    super().flush()  # what was written through the stream itself first
                    for chunk in whole_lines(text.encode("utf-8", "backslashreplace")):
                        _write_all(self._shared_fd, chunk)
                elif text:
                    self.stream.write(text)
                super().flush()
            except Exception:  # noqa: BLE001 - as StreamHandler.emit: report, go on
                self.handleError(logging.makeLogRecord({"msg": "writing log lines"}))
        finally:
            self.release()


def whole_lines(data: bytes, limit: int = select.PIPE_BUF) -> Iterator[bytes]:
    """`data` (lines ending in newlines) in pieces of whole lines of at most `limit`
    bytes; a longer line is a piece of its own (and may then interleave)."""
    start = 0
    while start < len(data):
        end = start + limit
        if end < len(data):
            cut = data.rfind(b"\n", start, end) + 1
            end = cut if cut > start else data.index(b"\n", start) + 1
        yield data[start:end]
        start = end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sole_handler(logger: logging.Logger, level: int) -> LineBatchingHandler | None:
    """The one handler a record of `logger` at `level` would reach, if that is all
    `log_fields` needs to honour: a LineBatchingHandler with a LineFormatter, and no
    filter on the way (only the logger's own filters and the handlers' apply)."""
    if logger.filters or logger.disabled:
        return None
    found: LineBatchingHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if (
                found is not None
                or type(handler) is not LineBatchingHandler
                or handler.filters
                or level < handler.level
                or not isinstance(handler.formatter, LineFormatter)
            ):
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


def log_fields(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """`logger.log(level, message, extra={"fields": fields})` for lines logged for every
    request. When the line goes to the handler `configure` installs and nowhere else (as
    in `inlet serve`), it is formatted and queued without a LogRecord and logging's
    handler machinery, which cost more than the rest of the line (~25k instructions a
    request, bench/instructions.py); anywhere else (tests' capture handlers, an
    operator's own logging setup) it goes through `logger.log`, same line."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_handler(logger, level)
    if handler is None:
        logger.log(level, "%s", message, extra={"fields": fields})
        return
    formatter: LineFormatter = handler.formatter  # type: ignore[assignment]
    try:
        line = formatter.line(
            time.time(), logging.getLevelName(level), logger.name, message, fields
        )
    except Exception:  # noqa: BLE001 - as emit(): report a line that cannot be formatted
        handler.handleError(logging.makeLogRecord({"msg": message, "fields": fields}))
        return
    handler.add_line(line, level)


class RateLimitedLog:
    """Logs each kind of line at most once every `interval_s` (60 s): for faults that
    repeat with every request or commit (a full disk, an unreachable core), where a line
    each time would bury everything else. The first line of a kind is logged at once;
    the next ones within the interval are only counted, and the first one logged after
    it says how many were held back (`suppressed` in its fields). Held-back lines are
    not written when the fault stops before the interval ends: the metrics count every
    occurrence. Safe to call from any thread.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, count: int = 1) -> bool:
        return self.log(logging.WARNING, kind, message, count)

    def log(self, level: int, kind: str, message: str, count: int = 1) -> bool:
        """Log `message` unless a line of `kind` was logged less than `interval_s` ago;
        then add `count` (the occurrences it stands for: events, requests) to the
        number held back. True when logged."""
        now = self._clock()
        with self._lock:
            last = self._logged_at.get(kind)
            if last is not None and now - last < self.interval_s:
                self._held[kind] = self._held.get(kind, 0) + count
                return False
            self._logged_at[kind] = now
            held = self._held.pop(kind, 0)
        fields: dict[str, Any] = {}
        if held and last is not None:
            message = (
                f"{message}; and {held} more in the {now - last:.0f} s since the previous "
                "line of this kind"
            )
            fields["suppressed"] = held
        self._logger.log(level, "%s", message, extra={"fields": fields})
        return True


def flush() -> None:
    """Write every line the root logger's handlers still hold (see LineBatchingHandler)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure(
    level: str = "INFO",
    stream: TextIO | None = None,
    json: bool | None = None,
    worker: int | None = None,
) -> None:
    """Send every logger's records to `stream` (stderr): JSON unless it is a terminal;
    `worker`: the number every line carries (LineFormatter)."""
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
    # Workers share their supervisor's stderr (its own lines are few: written as usual).
    handler = LineBatchingHandler(stream, shared=bool(worker))
    handler.setFormatter(JsonFormatter(worker) if json else TextFormatter(worker))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
