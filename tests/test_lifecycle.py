"""Shutdown: requests in progress finish (the drain), nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.stack import basic, start_stack
from tests.test_cli import inlet, ready_line, start, stop
from tests.waiting import eventually_sync


async def send_load_event(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    n: int,
    acknowledged: list[str],
) -> None:
    """POST event `load-N`; its messageId goes to `acknowledged` if answered 200."""
    event = {"type": "track", "userId": "u", "event": "Load", "messageId": f"load-{n}"}
    try:
        async with session.post(url + "/segment", data=json.dumps(event), headers=headers) as reply:
            if reply.status == 200:
                acknowledged.append((await reply.json())["messageId"])
            else:
                assert reply.status == 503, await reply.text()  # retried by Segment
    except aiohttp.ClientError:
        pass  # connection refused or dropped: Segment retries those too


async def test_stop_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    headers = {"Authorization": basic(stack.keys["ingest"]), "Content-Type": "application/json"}
    acknowledged: list[str] = []
    first_answers = asyncio.Event()

    async def send(session: aiohttp.ClientSession, n: int) -> None:
        await send_load_event(session, stack.url, headers, n, acknowledged)
        if len(acknowledged) >= 50:
            first_answers.set()

    async with aiohttp.ClientSession() as session:
        senders = [asyncio.create_task(send(session, n)) for n in range(400)]
        await first_answers.wait()
        await stack.stop()  # bridge drains first, then the core
        await asyncio.gather(*senders)

    assert len(acknowledged) >= 50
    db = sqlite3.connect(tmp_path / "inlet.db")
    stored = {row[0] for row in db.execute("SELECT message_id FROM events")}
    assert set(acknowledged) <= stored


# SIGTERM to a real `inlet serve`, with raw sockets: what a client sees of the drain.

GRACE_S = 30  # long, and the body timeout longer: a test that waits either out fails
FULL = b'{"type": "track", "userId": "u", "event": "Drained", "messageId": "%s"}'


def serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grace_s: float, workers: int = 1
) -> tuple[subprocess.Popen[str], int, str]:
    """`inlet serve` on a free port: the process, its port and an ingest key."""
    monkeypatch.setenv("INLET_SHUTDOWN_GRACE_S", str(grace_s))
    monkeypatch.setenv("INLET_BODY_TIMEOUT_S", "120")
    key = inlet("keys", "create", "--account", "acme", cwd=tmp_path).stdout.strip()
    args = [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--grpc",
        "127.0.0.1:0",
        "--workers",
        str(workers),
    ]
    process, ready = start(args, tmp_path, ready_line(workers))
    return process, int(ready[1]), key


def request_head(key: str, length: int, *extra: bytes) -> bytes:
    return (
        b"\r\n".join(
            [
                b"POST /segment HTTP/1.1",
                b"Host: inlet",
                b"Content-Type: application/json",
                b"Authorization: " + basic(key).encode(),
                b"Content-Length: %d" % length,
                *extra,
            ]
        )
        + b"\r\n\r\n"
    )


def begin_slow_request(port: int, key: str, body: bytes) -> socket.socket:
    """A connection whose request is in a handler, reading its body: the headers and
    half the body sent (the server's `100 Continue` shows the handler has started)."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(request_head(key, len(body), b"Expect: 100-continue"))
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        chunk = client.recv(1)
        assert chunk, "closed before 100 Continue"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100 ")
    client.sendall(body[: len(body) // 2])
    return client


def response(client: socket.socket) -> http.client.HTTPResponse:
    reply = http.client.HTTPResponse(client)
    reply.begin()
    return reply


def wait_until_refused(port: int) -> None:
    """Until the listening socket is closed: the server is draining."""

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    eventually_sync(refused, what="the server to stop accepting after SIGTERM")


def stored_ids(tmp_path: Path) -> set[str]:
    db = sqlite3.connect(tmp_path / "inlet-data" / "inlet.db")
    try:
        return {row[0] for row in db.execute("SELECT message_id FROM events")}
    finally:
        db.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_body_still_arriving_finish_and_closes_idle_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    server, port, key = serve(tmp_path, monkeypatch, GRACE_S, workers)
    try:
        with contextlib.ExitStack() as closing:  # the client sockets
            idle = closing.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            idle.sendall(request_head(key, len(FULL % b"before")) + FULL % b"before")
            first = response(idle)
            assert first.status == 200 and first.getheader("Connection") is None  # kept alive
            first.read()
            body = FULL % b"in-flight"
            slow = closing.enter_context(begin_slow_request(port, key, body))

            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            wait_until_refused(port)
            # The idle keep-alive connection is closed by the server: EOF, not a hang.
            assert idle.recv(1) == b""
            # The request being received keeps being read and is answered normally...
            slow.sendall(body[len(body) // 2 :])
            answer = response(slow)
            assert answer.status == 200, answer.read()
            assert json.loads(answer.read()) == {"message": "stored", "messageId": "in-flight"}
            # ...telling the client not to reuse the connection, which the server then closes.
            assert answer.getheader("Connection") == "close"
            assert slow.recv(1) == b""
            assert server.wait(timeout=60) == 0
            assert time.monotonic() - started < GRACE_S / 2  # nothing waited for a timeout
    finally:
        stop(server)
    assert {"before", "in-flight"} <= stored_ids(tmp_path)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_unfinished_at_the_end_of_the_grace_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    grace_s = 1.0
    server, port, key = serve(tmp_path, monkeypatch, grace_s, workers)
    try:
        with contextlib.ExitStack() as closing:  # the client sockets
            body = FULL % b"too-late"
            slow = closing.enter_context(begin_slow_request(port, key, body))
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=60) == 0
            assert time.monotonic() - started < grace_s + 5  # the grace, not the body timeout
            try:  # the rest of the body, after the grace: nobody is there to read it
                slow.sendall(body[len(body) // 2 :])
                answer = slow.recv(4096)
            except ConnectionError:
                answer = b""
            assert answer == b"", answer  # no status line at all, let alone a 2xx
    finally:
        stop(server)
    assert "too-late" not in stored_ids(tmp_path)


async def test_a_request_on_a_kept_alive_connection_as_the_drain_begins_is_answered(
    tmp_path: Path,
) -> None:
    stack = await start_stack(tmp_path)
    stopping = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.bridge.port)

        async def answer() -> tuple[bytes, dict[str, str]]:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            return head, json.loads(await asyncio.wait_for(reader.readexactly(length), 10))

        def send(message_id: bytes) -> None:
            body = FULL % message_id
            writer.write(request_head(stack.keys["ingest"], len(body)) + body)

        send(b"first")
        head, _ = await answer()
        assert head.startswith(b"HTTP/1.1 200") and b"Connection" not in head  # kept alive
        send(b"next")  # reaches the server's socket before the drain starts
        stopping = asyncio.create_task(stack.stop())
        head, reply = await answer()
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
        assert reply == {"message": "stored", "messageId": "next"}
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then closed
        writer.close()
    finally:
        await (stopping or stack.stop())
