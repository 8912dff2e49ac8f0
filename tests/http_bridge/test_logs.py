"""Structured logs: a request id on every line of a request, across the gRPC hop, and
nothing secret or personal in them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from http_bridge.config import BridgeConfig
from http_bridge.server import start_bridge
from service.config import CoreConfig
from service.logs import (
    JsonFormatter,
    RateLimitedLog,
    TextFormatter,
    configure,
    sane_request_id,
    whole_lines,
)
from tests.stack import Stack, basic, start_stack
from tests.waiting import settle


class Captured:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def logs() -> Iterator[Captured]:
    """Every logger's records as the JSON lines `inlet serve` writes, at DEBUG."""
    captured = Captured()
    handler = logging.StreamHandler(captured.stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield captured
    root.removeHandler(handler)
    root.setLevel(level)


async def post(
    stack: Stack, event: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, str]:
    headers = {"Authorization": basic(stack.keys["ingest"]), **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + "/segment", json=event, headers=headers) as reply,
    ):
        return reply.status, reply.headers["X-Request-Id"]


TRACK = {"type": "track", "userId": "u1", "event": "Logged", "messageId": "log-1"}


async def test_the_request_id_is_echoed_and_on_every_line_of_the_request(
    stack: Stack, logs: Captured
) -> None:
    status, echoed = await post(stack, TRACK, {"X-Request-Id": "lb-7f3a.9c"})
    assert (status, echoed) == (200, "lb-7f3a.9c")
    mine = [line for line in logs.lines() if line.get("request_id") == "lb-7f3a.9c"]
    by_logger = {line["logger"]: line for line in mine}
    access = by_logger["inlet.access"]  # the bridge's line
    assert access["status"] == 200 and access["route"] == "/segment"
    assert access["messageId"] == "log-1" and access["duration_ms"] > 0
    assert access["account"] == "acme"
    event = by_logger["inlet.events"]  # the core's line, across the gRPC hop
    assert event["messageId"] == "log-1" and event["type"] == "track"
    assert event["outcome"] == "stored"
    assert event["account_id"] == stack.account_ids["acme"] and event["key_id"]
    assert by_logger["inlet.grpc"]["code"] == "OK"


@pytest.mark.parametrize(
    "offered", ["", "x" * 65, "a b", "id\r\nX-Evil: 1", "ünïcode", "a,b", "<script>"]
)
def test_an_insane_incoming_request_id_is_replaced(offered: str) -> None:
    chosen = sane_request_id(offered)
    assert chosen != offered and len(chosen) == 16


async def test_requests_sharing_one_batch_keep_their_own_ids(stack: Stack, logs: Captured) -> None:
    events = [{**TRACK, "messageId": f"batch-{i}"} for i in range(40)]
    replies = await asyncio.gather(
        *(post(stack, event, {"X-Request-Id": f"req-{i}"}) for i, event in enumerate(events))
    )
    assert all(status == 200 for status, _ in replies)
    for line in logs.lines():
        if line["logger"] == "inlet.events":
            assert line["request_id"] == "req-" + line["messageId"].removeprefix("batch-")


async def test_keys_authorization_and_trait_values_are_never_logged(
    stack: Stack, logs: Captured
) -> None:
    key = stack.keys["ingest"]
    identify = {
        "type": "identify",
        "userId": "u1",
        "messageId": "log-2",
        "traits": {"email": "peter@example.com"},
    }
    assert (await post(stack, identify))[0] == 200
    wrong = key[:-4] + "AAAA"  # a wrong secret for a real key id
    assert (await post(stack, identify, {"Authorization": basic(wrong)}))[0] == 401
    assert (await post(stack, identify, {"Authorization": "Bearer " + key}))[0] == 401
    assert logs.lines(), "the requests were logged"
    for secret in (key, key.split("_")[2], wrong.split("_")[2], basic(key), basic(wrong)):
        assert secret not in logs.text
    assert "peter@example.com" not in logs.text


async def test_an_unparseable_request_is_one_warning_that_quotes_nothing(
    stack: Stack, logs: Captured
) -> None:
    """Scanners and broken proxies send requests aiohttp cannot parse: it answers 400
    and closes; the log gets a WARNING naming the kind of error (not an ERROR with a
    traceback quoting the bad line, which may be an Authorization header)."""
    key = stack.keys["ingest"]
    port = int(stack.url.rsplit(":", 1)[1])
    garbled = (  # a NUL in the Authorization value
        f"POST /segment HTTP/1.1\r\nHost: x\r\nAuthorization: {basic(key)}\x00\r\n"
        "Content-Length: 2\r\n\r\n{}"
    ).encode()
    bad_chunk = b"POST /segment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    for request in (garbled, bad_chunk):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await reader.read()  # aiohttp closes the connection after it
        writer.close()
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 "))
    lines = [line for line in logs.lines() if line.get("logger") == "aiohttp.server"]
    assert [line["level"] for line in lines] == ["WARNING", "WARNING"], lines
    assert "malformed HTTP request from 127.0.0.1, answered 400" in lines[0]["message"]
    assert all("error" not in line and "Traceback" not in json.dumps(line) for line in lines)
    for secret in (key, key.split("_")[2], basic(key)):
        assert secret not in logs.text


async def test_trait_values_are_logged_only_when_asked(tmp_path: Path, logs: Captured) -> None:
    stack = await start_stack(tmp_path, CoreConfig(listen="127.0.0.1:0", log_traits=True))
    try:
        identify = {"type": "identify", "userId": "u1", "traits": {"email": "peter@example.com"}}
        assert (await post(stack, identify))[0] == 200
    finally:
        await stack.stop()
    (event,) = [line for line in logs.lines() if line["logger"] == "inlet.events"]
    assert event["traits"] == {"email": "peter@example.com"}


async def test_plain_http_warns_once_that_segment_needs_https(logs: Captured) -> None:
    bridge = await start_bridge(BridgeConfig(host="127.0.0.1", port=0, core_target="127.0.0.1:1"))
    await bridge.stop()
    warnings = [line for line in logs.lines() if line["level"] == "WARNING"]
    assert len(warnings) == 1 and "HTTPS" in warnings[0]["message"]


def test_json_lines_unless_a_terminal_reads_them() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for stream, formatter in ((io.StringIO(), JsonFormatter), (Terminal(), TextFormatter)):
            configure("INFO", stream)
            (handler,) = root.handlers
            assert isinstance(handler.formatter, formatter)
            logging.getLogger("inlet.test").info("hello", extra={"fields": {"status": 200}})
            output = stream.getvalue()
            if formatter is JsonFormatter:
                assert json.loads(output)["status"] == 200
            else:
                assert output.rstrip().endswith("hello status=200")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_a_batch_call_is_named_by_its_requests() -> None:
    from service.logs import call_request_id, split_request_ids

    assert split_request_ids("ok,b c")[0] == "ok" and split_request_ids("ok,b c")[1] != "b c"
    ids = split_request_ids("req-1,req-2,req-3")
    assert ids == ("req-1", "req-2", "req-3")
    assert call_request_id(ids) == "req-1+2"
    assert call_request_id(("req-1",)) == "req-1"
    assert len(call_request_id(())) == len(call_request_id(("",))) == 16


async def test_at_info_a_stored_event_is_one_access_line_a_rejection_names_its_sender(
    stack: Stack, logs: Captured
) -> None:
    logging.getLogger().setLevel(logging.INFO)
    assert (await post(stack, TRACK, {"X-Request-Id": "ok-1"}))[0] == 200
    bad = {"type": "track", "userId": "u1", "messageId": "log-bad"}  # no `event`
    assert (await post(stack, bad, {"X-Request-Id": "bad-1"}))[0] == 400
    events = [line for line in logs.lines() if line["logger"] == "inlet.events"]
    (rejected,) = events  # the stored event's own line is DEBUG
    assert rejected["request_id"] == "bad-1" and rejected["reason"] == "missing_field"
    assert rejected["account_id"] == stack.account_ids["acme"] and rejected["key_id"]
    accesses = [line for line in logs.lines() if line["logger"] == "inlet.access"]
    assert [line["request_id"] for line in accesses] == ["ok-1", "bad-1"]


async def test_access_log_errors_keeps_info_for_what_an_operator_acts_on(
    tmp_path: Path, logs: Captured
) -> None:
    """INLET_ACCESS_LOG=errors: a 4xx/5xx answer is an INFO line, a 200 only at DEBUG."""
    config = BridgeConfig.from_env({"INLET_ACCESS_LOG": "errors"}, host="127.0.0.1", port=0)
    stack = await start_stack(tmp_path, bridge_config=config)
    try:
        logging.getLogger().setLevel(logging.INFO)
        assert (await post(stack, TRACK, {"X-Request-Id": "ok-1"}))[0] == 200
        bad = {"type": "track", "userId": "u1", "messageId": "log-bad"}  # no `event`
        assert (await post(stack, bad, {"X-Request-Id": "bad-1"}))[0] == 400
        logging.getLogger().setLevel(logging.DEBUG)
        assert (await post(stack, {**TRACK, "messageId": "m-2"}, {"X-Request-Id": "ok-2"}))[
            0
        ] == 200
    finally:
        await stack.stop()
    accesses = [line for line in logs.lines() if line["logger"] == "inlet.access"]
    assert [(line["request_id"], line["level"]) for line in accesses] == [
        ("bad-1", "INFO"),
        ("ok-2", "DEBUG"),
    ]
    with pytest.raises(ValueError):
        BridgeConfig(access_log="some")


async def test_every_event_of_an_sdk_batch_is_logged_under_its_request_id(
    stack: Stack, logs: Captured
) -> None:
    batch = {"batch": [{**TRACK, "type": "track", "messageId": f"sdk-{i}"} for i in range(3)]}
    headers = {"Authorization": basic(stack.keys["ingest"]), "X-Request-Id": "sdk-req"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + "/v1/batch", json=batch, headers=headers) as reply,
    ):
        assert reply.status == 200 and reply.headers["X-Request-Id"] == "sdk-req"
    events = [line for line in logs.lines() if line["logger"] == "inlet.events"]
    assert sorted(line["messageId"] for line in events) == ["sdk-0", "sdk-1", "sdk-2"]
    assert {line["request_id"] for line in events} == {"sdk-req"}


# -- how lines reach the stream ------------------------------------------------------------


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _batching(interval: float = 0.0) -> tuple[logging.Logger, CountingStream, Any]:
    from service.logs import LineBatchingHandler

    stream = CountingStream()
    handler = LineBatchingHandler(stream, interval=interval)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"inlet.test.batching.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream, handler


async def test_lines_of_one_loop_turn_are_written_together_and_in_order() -> None:
    logger, stream, _ = _batching()
    for n in range(50):
        logger.info("line %d", n)
    assert stream.getvalue() == ""  # not yet: the turn has not ended
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(50)]
    assert stream.writes == 1


async def test_lines_wait_at_most_the_interval_and_go_out_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop's clock stands still until the test moves it: "not yet" does not depend
    # on how fast the machine runs the turns in between.
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    logger, stream, _ = _batching(interval=0.05)
    logger.info("first")
    await asyncio.sleep(0)
    logger.info("second")  # another turn, the same write
    await asyncio.sleep(0)
    now[0] += 0.049
    await settle()
    assert stream.getvalue() == ""
    now[0] += 0.001  # the interval since the first line
    await settle()
    assert stream.getvalue().splitlines() == ["first", "second"]
    assert stream.writes == 1


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
async def test_log_fields_writes_the_line_logger_log_would(formatter: type[Any]) -> None:
    from service.logs import REQUEST_ID, log_fields

    logger, stream, handler = _batching()
    handler.setFormatter(formatter())
    logger.setLevel(logging.INFO)
    fields = {"method": "POST", "status": 200, "client": None}
    token = REQUEST_ID.set("req-1")

    def no_record(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("the direct path makes no LogRecord")

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(logger, "makeRecord", no_record)
            log_fields(logger, logging.INFO, "POST /segment 200", fields)
            log_fields(logger, logging.DEBUG, "below the level", fields)
        logger.info("%s", "POST /segment 200", extra={"fields": fields})
    finally:
        REQUEST_ID.reset(token)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    direct, logged = stream.getvalue().splitlines()

    def without_time(line: str) -> str:
        if formatter is JsonFormatter:
            return json.dumps({k: v for k, v in json.loads(line).items() if k != "time"})
        return line.partition(" ")[2]

    assert without_time(direct) == without_time(logged)
    assert "req-1" in direct and "POST /segment 200" in direct


async def test_log_fields_goes_through_logging_where_another_handler_listens() -> None:
    from service.logs import log_fields

    logger, stream, _ = _batching()
    extra = io.StringIO()
    other = logging.StreamHandler(extra)
    other.setFormatter(JsonFormatter())
    logger.addHandler(other)
    log_fields(logger, logging.INFO, "seen twice", {"status": 200})
    other.addFilter(lambda record: record.levelno > logging.INFO)  # a filter: honoured
    log_fields(logger, logging.INFO, "filtered out there", {"status": 201})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.getvalue() == "seen twice\nfiltered out there\n"  # its own format
    assert [json.loads(line)["status"] for line in extra.getvalue().splitlines()] == [200]


async def test_a_warning_and_a_line_from_another_thread_are_written_at_once() -> None:
    logger, stream, _ = _batching()
    logger.info("first")
    logger.warning("second")  # written now, after what was pending
    assert stream.getvalue().splitlines() == ["first", "second"]
    logger.info("third")
    await asyncio.to_thread(logger.info, "from a thread")  # no loop there: at once
    assert stream.getvalue().splitlines() == ["first", "second", "third", "from a thread"]


def test_without_a_loop_lines_are_written_at_once_and_shutdown_flushes() -> None:
    logger, stream, handler = _batching()
    logger.info("cli line")
    assert stream.getvalue() == "cli line\n"

    async def log_and_stop() -> None:
        logger.info("last words")  # the loop ends before its turn does

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_and_stop())
    loop.close()
    handler.flush()  # what logging.shutdown() does at exit
    assert stream.getvalue().splitlines() == ["cli line", "last words"]
    logger.info("after the loop closed")  # another loop's pending flush does not block
    assert stream.getvalue().splitlines()[-1] == "after the loop closed"


class FailingStream(io.StringIO):
    def flush(self) -> None:
        raise OSError(28, "No space left on device")


async def test_a_failing_log_stream_never_raises_into_the_caller_or_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.logs import LineBatchingHandler

    monkeypatch.setattr(logging, "raiseExceptions", False)  # as in production
    handler = LineBatchingHandler(FailingStream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("inlet.test.failing")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("written at once")  # would raise from flush()
        logger.error("again")
        for n in range(5):
            logger.info("batched %d", n)  # flushed by the loop: must not break it
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.to_thread(logger.info, "from a thread")
    finally:
        logger.removeHandler(handler)


def test_the_cli_writes_what_its_loop_logged_last_before_it_returns() -> None:
    from inlet_app import cli

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure("INFO", stream=stream, json=False)
    try:

        async def last_words() -> int:
            logging.getLogger("inlet.test.cli").info("stopping now")
            return 0  # the loop ends before the handler's timer fires

        assert cli._run(last_words()) == 0
        assert "stopping now" in stream.getvalue()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_rate_limited_line_is_logged_once_an_interval_and_then_says_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    warnings = RateLimitedLog(logging.getLogger("inlet.test"), 60.0, clock=lambda: now[0])
    logged = []
    with caplog.at_level(logging.WARNING, logger="inlet.test"):
        for second in range(0, 150, 10):  # a disk full for two and a half minutes
            now[0] = 100.0 + second
            logged.append(warnings.warning("full", "3 events refused", count=3))
            logged.append(warnings.warning("other", "a different kind"))
    assert logged.count(True) == 6  # each kind: at 0 s, 60 s, 120 s
    full = [r for r in caplog.records if r.getMessage().startswith("3 events")]
    assert [r.getMessage() for r in full] == [
        "3 events refused",
        "3 events refused; and 15 more in the 60 s since the previous line of this kind",
        "3 events refused; and 15 more in the 60 s since the previous line of this kind",
    ]
    assert [getattr(r, "fields", {}).get("suppressed") for r in full] == [None, 15, 15]


def test_each_line_names_its_worker_in_json_and_in_text() -> None:
    record = logging.makeLogRecord({"name": "inlet", "levelname": "INFO", "msg": "hello"})
    assert json.loads(JsonFormatter(worker=2).format(record))["worker"] == 2
    assert "worker" not in json.loads(JsonFormatter().format(record))  # not a worker
    assert JsonFormatter(worker=0).format(record).count('"worker":0') == 1  # the supervisor
    assert " w2 INFO inlet: hello" in TextFormatter(worker=2).format(record)


def test_workers_write_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    lines = [b"x" * n + b"\n" for n in (10, 3000, 2000, 5000, 1, 4095, 0)]
    pieces = list(whole_lines(b"".join(lines), 4096))
    assert b"".join(pieces) == b"".join(lines)
    assert all(piece.endswith(b"\n") for piece in pieces)  # never cut inside a line
    assert [len(p) for p in pieces] == [3012, 2001, 5001, 2, 4096, 1]  # the 5000 alone
