"""The read commands (inlet_app/cli_read.py) against a real `inlet serve`: profile get,
events list, events tail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.exact_values import EXACT_TRAITS, group_json, identify_json
from tests.test_cli import Served, post
from tests.waiting import eventually_sync


def test_profile_and_events_from_the_shell(served: Served) -> None:
    for event in (
        {
            "type": "identify",
            "userId": "u1",
            "anonymousId": "a1",
            "messageId": "c-1",
            "timestamp": "2026-01-01T00:00:00Z",
            "traits": {"First Name": "Ann"},
        },
        {"type": "track", "anonymousId": "a1", "event": "Clicked", "messageId": "c-2"},
        {"type": "track", "userId": "u2", "event": "Other", "messageId": "c-3"},
    ):
        assert post(served.url, served.key, event)[0] == 200

    profile = json.loads(served.client("profile", "get", "a1").stdout)
    assert profile["linkedIds"] == ["a1", "u1"]
    assert profile["traits"]["firstName"]["value"] == "Ann"
    assert profile["eventCounts"] == {"identify": "1", "track": "1"}

    lines = served.client("events", "list", "--user", "u1").stdout.splitlines()
    assert [json.loads(line)["messageId"] for line in lines] == ["c-1", "c-2"]
    newest = served.client("events", "list", "--newest-first", "--limit", "1")
    (line,) = newest.stdout.splitlines()
    assert json.loads(line)["event"]["event"] == "Other"
    assert "--page-token" in newest.stderr  # how to go on

    missing = served.client("profile", "get", "nobody", check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_profile_get_prints_trait_values_as_sent(served: Served) -> None:
    assert post(served.url, served.key, identify_json("x-1", "u1"))[0] == 200
    assert post(served.url, served.key, group_json("x-2", "u1", "g1"))[0] == 200
    printed = served.client("profile", "get", "u1").stdout
    profile = json.loads(printed)
    for traits in (profile["traits"], profile["groups"][0]["traits"]):
        assert set(traits) == set(EXACT_TRAITS)
        for key, text in EXACT_TRAITS.items():
            assert json.dumps(traits[key]["value"]) == json.dumps(json.loads(text)), key
            assert set(traits[key]) == {"value", "timestamp", "messageId"}
    # Numbers exactly as written, not as a double would print them.
    for text in (
        '"value": 5,',
        '"value": 9007199254740993123,',
        '"value": 1.50,',
        '"value": -0,',
        '"value": 123456789012345678901234567890,',
    ):
        assert text in printed


def tail(served: Served, cursor_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inlet_app.cli",
            "events",
            "tail",
            "--core",
            served.core,
            "--key",
            served.key,
            "--all",
            "--cursor-file",
            str(cursor_file),
        ],
        cwd=served.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def read_lines(process: subprocess.Popen[str], count: int) -> list[str]:
    return [line["messageId"] for line in read_events(process, count)]


def read_events(process: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert process.stdout is not None
    return [json.loads(process.stdout.readline()) for _ in range(count)]


def test_events_tail_resumes_from_its_cursor_file(served: Served, tmp_path: Path) -> None:
    cursor_file = tmp_path / "tail.cursor"
    for n in range(3):
        event = {"type": "track", "userId": "u1", "event": "E", "messageId": f"t-{n}"}
        assert post(served.url, served.key, event)[0] == 200

    with tail(served, cursor_file) as first:  # its pipe closed at the end
        try:
            assert read_lines(first, 3) == ["t-0", "t-1", "t-2"]
            # Live: posted after the tail started.
            post(
                served.url,
                served.key,
                {"type": "track", "userId": "u1", "event": "E", "messageId": "t-3"},
            )
            (last,) = read_events(first, 1)
            assert last["messageId"] == "t-3"
            # The cursor is saved right after the line is printed.
            eventually_sync(
                lambda: (
                    cursor_file.exists()
                    and cursor_file.read_text().strip() == str(last["sequence"])
                ),
                what="the cursor file to hold the last sequence printed",
            )
        finally:
            first.kill()
    for n in (4, 5):
        event = {"type": "track", "userId": "u1", "event": "E", "messageId": f"t-{n}"}
        assert post(served.url, served.key, event)[0] == 200
    # Restarted with the same cursor file: it goes on after the last event it printed.
    with tail(served, cursor_file) as second:
        try:
            assert read_lines(second, 2) == ["t-4", "t-5"]
        finally:
            second.kill()


def test_read_commands_need_a_key(tmp_path: Path) -> None:
    env_without_key = {k: v for k, v in os.environ.items() if k != "INLET_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "inlet_app.cli", "profile", "get", "u1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env_without_key,
        check=False,
    )
    assert result.returncode == 2 and "INLET_API_KEY" in result.stderr
