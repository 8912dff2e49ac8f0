"""The operator commands (inlet_app/cli_admin.py) against a real `inlet serve`: accounts,
key rotation, maintenance mode; they work on the database, and the server follows."""

from __future__ import annotations

import itertools
import time

from tests.test_cli import Served, inlet, post


def test_operator_commands(served: Served) -> None:
    cwd = served.cwd
    inlet("accounts", "create", "globex", cwd=cwd)
    assert inlet("accounts", "create", "globex", cwd=cwd, check=False).returncode == 2
    listing = inlet("accounts", "list", cwd=cwd).stdout
    assert "acme" in listing and "globex" in listing

    key_id = served.key.split("_")[1]
    rotated = inlet("keys", "rotate", key_id, "--overlap", "1h", cwd=cwd)
    new_key = rotated.stdout.strip()
    assert new_key.startswith("inlet_") and "stops working at" in rotated.stderr
    event = {"type": "track", "userId": "u1", "event": "E"}
    assert post(served.url, new_key, event)[0] == 200
    assert post(served.url, served.key, dict(event, event="F"))[0] == 200  # still valid

    inlet("maintenance", "on", "--message", "upgrading", cwd=cwd)
    assert "is on" in inlet("maintenance", "status", cwd=cwd).stdout
    deadline = time.monotonic() + 10
    while (answer := post(served.url, new_key, dict(event, event="G")))[0] != 503:
        assert time.monotonic() < deadline, "the server never saw maintenance mode"
        time.sleep(0.05)
    assert answer[1] == {"message": "upgrading", "code": "maintenance"}
    inlet("maintenance", "off", cwd=cwd)
    while post(served.url, new_key, dict(event, event="G"))[0] != 200:
        assert time.monotonic() < deadline, "the server never left maintenance mode"
        time.sleep(0.05)

    # Suppress with Delete, switched in the database: the server follows within seconds.
    assert post(served.url, new_key, {"type": "delete", "userId": "gone"})[0] == 200
    inlet("accounts", "set", "acme", "--suppress-deleted-users", "on", cwd=cwd)
    deadline = time.monotonic() + 10
    for attempt in itertools.count():  # a returning user's events, until suppressed
        back = dict(event, userId="gone", messageId=f"back-{attempt}")
        if post(served.url, new_key, back)[1].get("suppressed"):
            break
        assert time.monotonic() < deadline, "the setting was never seen"
        time.sleep(0.05)
    inlet("accounts", "create", "strict", "--suppress-deleted-users", "on", cwd=cwd)
    rows = inlet("accounts", "list", cwd=cwd).stdout.splitlines()
    assert {row.split()[0]: row.split(None, 3)[3] for row in rows[1:]} == {
        "acme": "suppressed",
        "globex": "may return",
        "strict": "suppressed",
    }
    inlet("accounts", "set", "acme", "--suppress-deleted-users", "off", cwd=cwd)

    inlet("accounts", "suspend", "acme", cwd=cwd)
    while post(served.url, new_key, dict(event, event="H"))[0] != 403:
        assert time.monotonic() < deadline, "the suspension was never seen"
        time.sleep(0.05)
    inlet("accounts", "resume", "acme", cwd=cwd)
