"""Real faults, real processes: kill -9, a stalled core, a full disk. Nothing acknowledged is lost.

Each test drives sustained load, injects the fault, and then checks the one rule
that matters to Segment: every event that got a 2xx is in the store exactly once;
everything else got a 5xx or a broken connection, which Segment retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry

from http_bridge.app_keys import BATCHER
from http_bridge.config import BridgeConfig
from service.store import SqliteStore, Store
from tests.stack import Stack, basic, start_stack
from tests.test_cli import drain, free_port
from tests.waiting import eventually


def create_key(data: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "inlet_app.cli", "keys", "create", "--account", "acme"],
        cwd=data,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@contextmanager
def process(args: list[str], cwd: Path, ready: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """Run `inlet ARGS` until the block ends (SIGKILL if still alive)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "inlet_app.cli", *args],
        cwd=cwd,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if re.search(ready, line):
            break
        if not line and proc.poll() is not None:
            raise AssertionError(f"inlet {args} exited with {proc.returncode}")
    # Keep reading: a log line per request fills the 64 KiB pipe in a few hundred
    # requests, and a server whose stderr is full blocks in its next log call.
    drain(proc.stderr)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


LOAD_TIMEOUT_S = 30.0  # for the load to reach a point; far more than it takes


class Load:
    """Closed-loop senders of unique events; records what was acknowledged."""

    def __init__(self, url: str, key: str, senders: int = 16) -> None:
        self.url = url
        self.headers = {"Authorization": basic(key), "Content-Type": "application/json"}
        self.senders = senders
        self.acknowledged: list[str] = []
        self.statuses: Counter[int | str] = Counter()
        self._count = 0
        self._stop = asyncio.Event()

    async def _sender(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            self._count += 1
            message_id = f"load-{self._count}"
            event = {"type": "track", "userId": "u1", "event": "Load", "messageId": message_id}
            try:
                async with session.post(
                    self.url, data=json.dumps(event), headers=self.headers
                ) as reply:
                    self.statuses[reply.status] += 1
                    if 200 <= reply.status < 300:
                        self.acknowledged.append(message_id)
                    else:
                        assert reply.status == 503, await reply.text()
                        assert "Retry-After" in reply.headers
            except (aiohttp.ClientError, TimeoutError):
                self.statuses["connection error"] += 1
                await asyncio.sleep(0.01)

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait for `predicate` while the load runs; a failure shows the statuses so far."""
        await eventually(
            predicate,
            what=lambda: f"{what}; statuses so far {dict(self.statuses)}",
            timeout=LOAD_TIMEOUT_S,
        )

    async def __aenter__(self) -> Load:  # noqa: PYI034
        timeout = aiohttp.ClientTimeout(total=10)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._tasks = [
            asyncio.create_task(self._sender(self._session)) for _ in range(self.senders)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


def stored_ids(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [row[0] for row in db.execute("SELECT message_id FROM events")]


def assert_nothing_acknowledged_was_lost(database: Path, load: Load) -> None:
    stored = stored_ids(database)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = set(load.acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events are not in the store"


async def test_kill_9_of_inlet_serve_under_load(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    port, grpc_port = free_port(), free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--grpc", f"127.0.0.1:{grpc_port}"]
    url = f"http://127.0.0.1:{port}/segment"
    async with Load(url, key) as load:
        with process(args, tmp_path, "bridge listening") as server:
            await load.until(lambda: len(load.acknowledged) >= 300, "300 acknowledged events")
            server.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
            server.wait()
        before_restart = len(load.acknowledged)
        await load.until(lambda: load.statuses["connection error"] > 0, "a connection error")
        # Restart on the same data: ingestion resumes, no manual step.
        with process(args, tmp_path, "bridge listening"):
            await load.until(
                lambda: len(load.acknowledged) >= before_restart + 300,
                "300 more acknowledged events after the restart",
            )
    assert_nothing_acknowledged_was_lost(tmp_path / "inlet-data" / "inlet.db", load)
    assert set(load.statuses) <= {200, 503, "connection error"}


async def test_kill_9_of_the_core_then_the_bridge_recovers_by_itself(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    port, grpc_port = free_port(), free_port()
    core_args = ["serve", "core", "--grpc", f"127.0.0.1:{grpc_port}"]
    bridge_args = [
        "serve",
        "bridge",
        "--core",
        f"127.0.0.1:{grpc_port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    fast = {"INLET_CORE_TIMEOUT_S": "1", "INLET_REQUEST_TIMEOUT_S": "2"}
    async with Load(f"http://127.0.0.1:{port}/segment", key) as load:
        with process(bridge_args, tmp_path, "bridge listening", **fast):
            with process(core_args, tmp_path, "core listening") as core:
                await load.until(lambda: len(load.acknowledged) >= 300, "300 acknowledged events")
                core.send_signal(signal.SIGKILL)
                core.wait()
            refused_before = load.statuses[503]
            await load.until(lambda: load.statuses[503] > refused_before, "a 503")  # not a hang
            acknowledged = len(load.acknowledged)
            with process(core_args, tmp_path, "core listening"):
                # The same bridge process, never restarted, stores events again.
                await load.until(
                    lambda: len(load.acknowledged) >= acknowledged + 300,
                    "300 more acknowledged events after the restart",
                )
    assert_nothing_acknowledged_was_lost(tmp_path / "inlet-data" / "inlet.db", load)
    assert set(load.statuses) <= {200, 503, "connection error"}


async def test_a_stalled_core_gets_503_within_the_deadline_then_recovers(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    port, grpc_port = free_port(), free_port()
    fast = {"INLET_CORE_TIMEOUT_S": "1", "INLET_REQUEST_TIMEOUT_S": "1.5"}
    url = f"http://127.0.0.1:{port}/segment"
    headers = {"Authorization": basic(key), "Content-Type": "application/json"}
    event = {"type": "track", "userId": "u1", "event": "Stall", "messageId": "stall-1"}
    with (
        process(
            ["serve", "core", "--grpc", f"127.0.0.1:{grpc_port}"], tmp_path, "core listening"
        ) as core,
        process(
            [
                "serve",
                "bridge",
                "--core",
                f"127.0.0.1:{grpc_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            tmp_path,
            "bridge listening",
            **fast,
        ),
    ):
        async with aiohttp.ClientSession() as session:
            core.send_signal(signal.SIGSTOP)  # alive, connected, answering nothing
            try:
                started = time.monotonic()
                async with session.post(url, json=event, headers=headers) as reply:
                    assert reply.status == 503 and "Retry-After" in reply.headers
                    assert (await reply.json())["code"] == "core_timeout"  # reached, too slow
                assert time.monotonic() - started < 3
            finally:
                core.send_signal(signal.SIGCONT)
            # The answer may have been committed after all (the core was only paused):
            # Segment's retry is then a duplicate, still a 200.
            async with session.post(url, json=event, headers=headers) as reply:
                assert reply.status == 200


async def fill_the_disk(store: Store, spare_pages: int) -> None:
    """Let the SQLite file grow by `spare_pages` pages at most: then every commit fails
    as it would on a full disk ("database or disk is full")."""

    def cap_the_file(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + spare_pages}")

    assert isinstance(store, SqliteStore)
    await store.use_writer(cap_the_file)


async def test_a_full_disk_is_503_and_nothing_is_half_written(tmp_path: Path) -> None:
    stack: Stack = await start_stack(tmp_path)
    try:
        store = stack.store
        await fill_the_disk(store, 8)
        headers = {"Authorization": basic(stack.keys["ingest"]), "Content-Type": "application/json"}
        statuses: list[int] = []
        async with aiohttp.ClientSession() as session:
            for n in range(40):
                event = {
                    "type": "track",
                    "userId": "u",
                    "event": "Big",
                    "messageId": f"big-{n}",
                    "properties": {"blob": "x" * 4000},
                }
                async with session.post(stack.url + "/segment", json=event, headers=headers) as r:
                    statuses.append(r.status)
                    if r.status != 200:
                        assert r.status == 503 and (await r.json())["code"] == "store_unavailable"
                        assert "Retry-After" in r.headers
        assert 200 in statuses and 503 in statuses
        stored = await store.count_events(stack.account_ids["acme"])
        assert stored == statuses.count(200)  # every 200 stored, no 503 half-written
    finally:
        await stack.stop()


async def test_a_full_disk_logs_one_warning_not_one_per_batch_and_counts_every_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    stack: Stack = await start_stack(tmp_path, registry=registry)
    try:
        await fill_the_disk(stack.store, 2)
        headers = {"Authorization": basic(stack.keys["ingest"]), "Content-Type": "application/json"}
        statuses: Counter[tuple[int, str]] = Counter()
        async with aiohttp.ClientSession() as session:
            senders = asyncio.Semaphore(8)  # batches of a few events: many failed commits

            async def send(event: dict[str, object]) -> None:
                async with (
                    senders,
                    session.post(stack.url + "/segment", json=event, headers=headers) as reply,
                ):
                    statuses[reply.status, (await reply.json()).get("code", "")] += 1

            caplog.set_level(logging.INFO)
            caplog.clear()  # from here on: the start-up lines are not the disk's
            events: list[dict[str, object]] = [
                {
                    "type": "track",
                    "userId": "u",
                    "event": "Full",
                    "messageId": f"full-{n}",
                    "properties": {"blob": "x" * 2000},
                }
                for n in range(300)
            ]
            events[7] = {"type": "track", "userId": "u", "messageId": "no-event-name"}  # a 400
            await asyncio.gather(*(send(event) for event in events))
        refused_requests = statuses[503, "store_unavailable"]
        assert statuses[200, ""] < 10 and refused_requests >= 290  # a few fit, then none
        assert set(statuses) <= {(200, ""), (503, "store_unavailable"), (400, "missing_field")}
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) <= 2, [r.getMessage() for r in warnings]
        assert any("database or disk is full" in r.getMessage() for r in warnings)
        # Per request, the access line stays; the client's mistake keeps its event line.
        access = [r for r in caplog.records if r.name == "inlet.access"]
        assert len(access) == 300
        rejected = [r for r in caplog.records if r.name == "inlet.events"]
        assert [r.fields["reason"] for r in rejected] == ["missing_field"]  # type: ignore[attr-defined]
        # The metrics count every refused event, and every failed commit.
        refused = registry.get_sample_value(
            "inlet_events_total",
            {"type": "track", "outcome": "rejected", "reason": "store_unavailable"},
        )
        assert refused == refused_requests
        failed_commits = registry.get_sample_value("inlet_store_write_failures_total")
        assert failed_commits is not None and failed_commits > len(warnings)
    finally:
        await stack.stop()


async def test_a_slow_client_gets_408_and_does_not_hold_the_server(tmp_path: Path) -> None:
    stack = await start_stack(
        tmp_path, bridge_config=BridgeConfig(host="127.0.0.1", port=0, body_timeout_s=0.5)
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.bridge.port)
        writer.write(
            b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: " + basic(stack.keys["ingest"]).encode() + b"\r\n"
            b'Connection: close\r\nContent-Length: 1000\r\n\r\n{"type": '  # ...then nothing
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        writer.close()
        await writer.wait_closed()
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body)["code"] == "request_timeout"
    finally:
        await stack.stop()


async def test_a_noisy_key_is_rate_limited_without_starving_others(tmp_path: Path) -> None:
    from service.config import CoreConfig

    stack = await start_stack(
        tmp_path, core_config=CoreConfig(listen="127.0.0.1:0", rate_limit_per_key=5)
    )
    try:
        quiet = await stack.add_key("quiet", account="globex")
        statuses: list[int] = []
        async with aiohttp.ClientSession() as session:

            async def send(key: str, n: int) -> tuple[int, dict[str, str], CIMultiDictProxy[str]]:
                event = {
                    "type": "track",
                    "userId": "u",
                    "event": "E",
                    "messageId": f"{key[-6:]}-{n}",
                }
                headers = {"Authorization": basic(key), "Content-Type": "application/json"}
                async with session.post(stack.url + "/segment", json=event, headers=headers) as r:
                    return r.status, await r.json(), r.headers

            noisy = [await send(stack.keys["ingest"], n) for n in range(12)]
            statuses = [status for status, _, _ in noisy]
            limited = [(body, headers) for status, body, headers in noisy if status == 429]
            assert statuses[:5] == [200] * 5 and limited  # a burst of 5, then refused
            body, headers = limited[0]
            assert body["code"] == "rate_limited" and int(headers["Retry-After"]) > 0
            assert (await send(quiet, 1))[0] == 200  # another account is unaffected
        stored = await stack.store.count_events(stack.account_ids["acme"])
        assert stored == statuses.count(200)
    finally:
        await stack.stop()


async def test_overload_is_refused_at_once_with_503(tmp_path: Path) -> None:
    import grpc

    from inlet.v1 import events_pb2, events_pb2_grpc
    from service.config import CoreConfig

    stack = await start_stack(
        tmp_path,
        core_config=CoreConfig(listen="127.0.0.1:0", max_inflight_events=1),
        bridge_config=BridgeConfig(host="127.0.0.1", port=0, max_pending=1),
        busy_timeout_ms=3000,
    )
    blocker = sqlite3.connect(tmp_path / "inlet.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the first event's commit now waits
        headers = {"Authorization": basic(stack.keys["ingest"]), "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:

            async def send(n: int) -> tuple[int, str]:
                event = {"type": "track", "userId": "u", "event": "E", "messageId": f"o-{n}"}
                async with session.post(stack.url + "/segment", json=event, headers=headers) as r:
                    return r.status, (await r.json()).get("code", "")

            first = asyncio.create_task(send(1))  # in the core, waiting for the store
            await eventually(
                lambda: stack.core.ingestor.inflight != 0, what="the first event in the core"
            )
            second = asyncio.create_task(send(2))  # queued in the bridge (its cap: 1)
            await eventually(
                lambda: stack.bridge.runner.app[BATCHER].pending != 0,
                what="the second event queued in the bridge",
            )
            # The bridge is full: refused at once, not queued behind the others (they
            # wait for the store until the blocker ends, below).
            assert await send(3) == (503, "overloaded")
            assert not first.done() and not second.done()
            # The core is full too: a gRPC caller is refused at once as well.
            async with grpc.aio.insecure_channel(stack.core_target) as channel:
                stub = events_pb2_grpc.EventServiceStub(channel)
                item = events_pb2.IngestItem(json=b'{"type":"track","userId":"u","event":"E"}')
                metadata = [("authorization", f"Bearer {stack.keys['ingest']}")]
                reply = await stub.IngestBatch(
                    events_pb2.IngestBatchRequest(items=[item]), metadata=metadata, timeout=1
                )
                assert reply.results[0].reason == "overloaded"
                assert reply.results[0].code == grpc.StatusCode.UNAVAILABLE.value[0]
            blocker.execute("ROLLBACK")
            assert (await first)[0] == 200
            assert (await second)[0] == 200
    finally:
        blocker.close()
        await stack.stop()


async def test_trickled_headers_are_cut_off(tmp_path: Path) -> None:
    stack = await start_stack(
        tmp_path, bridge_config=BridgeConfig(host="127.0.0.1", port=0, header_timeout_s=0.5)
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.bridge.port)
        writer.write(b"POST /segment HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server hung up
        assert time.monotonic() - started < 5
        writer.close()
        # Meanwhile and afterwards, real requests are served.
        status, _ = await _post_one(stack)
        assert status == 200
    finally:
        await stack.stop()


async def _post_one(stack: Stack) -> tuple[int, dict[str, str]]:
    event = {"type": "track", "userId": "u", "event": "E", "messageId": "after-slow"}
    headers = {"Authorization": basic(stack.keys["ingest"]), "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + "/segment", json=event, headers=headers) as reply,
    ):
        return reply.status, await reply.json()
