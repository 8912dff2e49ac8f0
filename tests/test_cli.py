"""The `inlet` command as a user runs it: real processes, a real data folder, signals."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from service.cli import parse_expiry


def inlet(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=check,
        env={**os.environ, "INLET_LOG_LEVEL": "INFO"},
    )  # fmt: skip


def post(url: str, key: str, event: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(event).encode(),
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
    assert re.fullmatch(r"inlet_[0-9a-f]{16}_[\w-]{43}", key), "the key alone on stdout"
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


def test_serve_stores_events_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    key = inlet("keys", "create", "--account", "acme", cwd=tmp_path).stdout.strip()
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--grpc", "127.0.0.1:0"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if match := re.search(r"bridge listening on http://127\.0\.0\.1:(\d+)/segment", line):
                port = int(match[1])
        assert port is not None, "the bridge did not start"
        url = f"http://127.0.0.1:{port}/segment"
        identify = {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}}
        status, body = post(url, key, identify)
        assert status == 200 and body["message"] == "stored"
        # No messageId: a digest of the body stands in, so a redelivery dedupes.
        assert post(url, key, identify) == (
            200,
            dict(body, message="already stored", duplicate=True),
        )
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    # The event is in the default database after a clean stop.
    db = sqlite3.connect(tmp_path / "inlet-data" / "inlet.db")
    assert db.execute("SELECT count(*), min(type) FROM events").fetchone() == (1, "identify")
