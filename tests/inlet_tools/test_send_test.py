"""`inlet send-test` plays Segment against a live endpoint."""

from __future__ import annotations

import subprocess
import sys

from inlet_tools.send_test import SAMPLE_FILES, sample
from tests.stack import LiveStack


def send_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inlet_app.cli", "send-test", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )


def test_every_sample_is_sent_and_shown_side_by_side(live: LiveStack) -> None:
    url = live.stack.url + "/segment"
    done = send_test("--url", url, "--key", live.stack.keys["ingest"], "--settings", '{"a": 1}')
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Request from Segment") == len(SAMPLE_FILES) == 7
    assert done.stdout.count("HTTP 200 OK") == 7
    assert "User-Agent: Segment.io/1.0" in done.stdout and "X-Segment-Settings: " in done.stdout


def test_a_refusal_is_shown_and_fails_the_command(live: LiveStack) -> None:
    done = send_test("--url", live.stack.url + "/segment", "--key", "nope", "--type", "track")
    assert done.returncode == 1
    assert "HTTP 401 Unauthorized" in done.stdout and "invalid_api_key" in done.stdout


def test_load_mode_summarises(live: LiveStack) -> None:
    url = live.stack.url + "/segment"
    done = send_test(
        "--url", url, "--key", live.stack.keys["ingest"], "--count", "40", "--rate", "400"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sent 40 events" in done.stdout and "statuses: 200: 40" in done.stdout
    assert "latency: p50" in done.stdout


def test_samples_are_real_spec_events() -> None:
    for kind in SAMPLE_FILES:
        assert sample(kind)["type"] == kind
