"""The `inlet` command as a user runs it: real processes, a real data folder, signals."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from inlet_app.cli_admin import parse_expiry


def inlet(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inlet_app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        env={**os.environ, "INLET_LOG_LEVEL": "INFO"},
    )


def post(url: str, key: str, event: Mapping[str, object] | bytes) -> tuple[int, dict[str, object]]:
    """POST `event` (a dict, or JSON text sent as is) with `key`; the status and reply."""
    request = urllib.request.Request(
        url,
        data=event if isinstance(event, bytes) else json.dumps(event).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = inlet("keys", "create", "--account", "acme", "--scope", "ingest,read", cwd=tmp_path)
    key = created.stdout.strip()
    assert re.fullmatch(r"inlet_[0-9a-f]{16}_[A-Za-z0-9]{43}", key), "the key alone on stdout"
    assert "shown only once" in created.stderr
    key_id = key.split("_")[1]
    assert (tmp_path / "inlet-data" / "inlet.db").exists()  # the embedded default

    listing = inlet("keys", "list", cwd=tmp_path).stdout
    assert key_id in listing and "ingest,read" in listing
    assert key.split("_")[2] not in listing  # never the secret

    inlet("keys", "revoke", key_id, cwd=tmp_path)
    assert key_id not in inlet("keys", "list", cwd=tmp_path).stdout
    assert key_id in inlet("keys", "list", "--all", cwd=tmp_path).stdout


def test_keys_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    bad_scope = inlet(
        "keys", "create", "--account", "a", "--scope", "root", cwd=tmp_path, check=False
    )
    assert bad_scope.returncode == 2 and "unknown scope root" in bad_scope.stderr
    missing = inlet("keys", "revoke", "0000000000000000", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "no key" in missing.stderr


def test_parse_expiry() -> None:
    now = 1_700_000_000_000_000
    assert parse_expiry("30d", now) == now + 30 * 86_400_000_000
    assert parse_expiry("12h", now) == now + 12 * 3_600_000_000
    assert parse_expiry("2100-01-01T00:00:00Z", now) == 4_102_444_800_000_000
    with pytest.raises(ValueError):
        parse_expiry("soon", now)
    with pytest.raises(ValueError):
        parse_expiry("2000-01-01", now)


def drain(stream: IO[str]) -> None:
    """Read a server's log pipe to its end on a thread, then close it: request log lines
    would fill the pipe and block the server, and an unclosed pipe is a ResourceWarning."""

    def read() -> None:
        with stream:
            stream.read()

    threading.Thread(target=read, daemon=True).start()


def start(args: list[str], cwd: Path, ready: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """Start `inlet ARGS`; return the process and the match of `ready` in its log."""
    process = subprocess.Popen(
        [sys.executable, "-m", "inlet_app.cli", *args], cwd=cwd, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if match := re.search(ready, line):
            drain(process.stderr)
            return process, match
        if not line and process.poll() is not None:
            break
    process.kill()
    process.wait()
    process.stderr.close()
    raise AssertionError(f"`inlet {' '.join(args)}` did not start")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


BRIDGE_READY = r"bridge listening on http://127\.0\.0\.1:(\d+)/segment"
CORE_READY = r"core listening on 127\.0\.0\.1:(\d+) \(gRPC\)"
#: `inlet serve --workers N`, once every worker serves.
WORKERS_READY = r"\d+ workers serving on http://127\.0\.0\.1:(\d+)/segment"


def ready_line(workers: int) -> str:
    return BRIDGE_READY if workers == 1 else WORKERS_READY


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and not handed out before in this run: two calls in
    a row may otherwise get the same port back from the kernel (a core and a bridge then
    fight over it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


@dataclass
class Served:
    """A running `inlet serve` (the `served` fixture) and a key that may ingest and read."""

    url: str
    core: str
    key: str
    cwd: Path

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return inlet(*args, "--core", self.core, "--key", self.key, cwd=self.cwd, check=check)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_stores_events_and_stops_cleanly_on_sigterm(tmp_path: Path, workers: int) -> None:
    key = inlet("keys", "create", "--account", "acme", cwd=tmp_path).stdout.strip()
    server, ready = start(
        [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--grpc",
            "127.0.0.1:0",
            "--workers",
            str(workers),
        ],
        tmp_path,
        ready_line(workers),
    )
    url = f"http://127.0.0.1:{ready[1]}/segment"
    identify = {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}}
    status, body = post(url, key, identify)
    assert status == 200 and body["message"] == "stored"
    # No messageId: a digest of the body stands in, so a redelivery dedupes.
    assert post(url, key, identify) == (200, dict(body, message="already stored", duplicate=True))
    assert stop(server) == 0
    # The event is in the default database after a clean stop.
    db = sqlite3.connect(tmp_path / "inlet-data" / "inlet.db")
    assert db.execute("SELECT count(*), min(type) FROM events").fetchone() == (1, "identify")


def test_core_and_bridge_as_separate_processes(tmp_path: Path) -> None:
    key = inlet("keys", "create", "--account", "acme", cwd=tmp_path).stdout.strip()
    core, core_ready = start(["serve", "core", "--grpc", "127.0.0.1:0"], tmp_path, CORE_READY)
    try:
        bridge, ready = start(
            [
                "serve",
                "bridge",
                "--core",
                f"127.0.0.1:{core_ready[1]}",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],
            tmp_path,
            BRIDGE_READY,
        )
        url = f"http://127.0.0.1:{ready[1]}/segment"
        event = {"type": "track", "userId": "u1", "event": "Split", "messageId": "s-1"}
        assert post(url, key, event) == (200, {"message": "stored", "messageId": "s-1"})
        assert stop(bridge) == 0
    finally:
        assert stop(core) == 0
