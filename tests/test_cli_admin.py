"""The operator commands (inlet_app/cli_admin.py) against a real `inlet serve`: accounts,
key rotation, maintenance mode; they work on the database, and the server follows."""

from __future__ import annotations

import itertools

from tests.test_cli import Served, inlet, post
from tests.waiting import eventually_sync


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

    def refused() -> tuple[int, dict[str, object]] | None:
        answer = post(served.url, new_key, dict(event, event="G"))
        return answer if answer[0] == 503 else None

    answer = eventually_sync(refused, what="the server to see maintenance mode")
    assert answer[1] == {"message": "upgrading", "code": "maintenance"}
    inlet("maintenance", "off", cwd=cwd)
    eventually_sync(
        lambda: post(served.url, new_key, dict(event, event="G"))[0] == 200,
        what="the server to leave maintenance mode",
    )

    # Suppress with Delete, switched in the database: the server follows within seconds.
    assert post(served.url, new_key, {"type": "delete", "userId": "gone"})[0] == 200
    inlet("accounts", "set", "acme", "--suppress-deleted-users", "on", cwd=cwd)
    attempts = itertools.count()

    def suppressed() -> bool:  # a returning user's events, until suppressed
        back = dict(event, userId="gone", messageId=f"back-{next(attempts)}")
        return bool(post(served.url, new_key, back)[1].get("suppressed"))

    eventually_sync(suppressed, what="the server to see the setting")
    inlet("accounts", "create", "strict", "--suppress-deleted-users", "on", cwd=cwd)
    rows = inlet("accounts", "list", cwd=cwd).stdout.splitlines()
    assert {row.split()[0]: row.split(None, 3)[3] for row in rows[1:]} == {
        "acme": "suppressed",
        "globex": "may return",
        "strict": "suppressed",
    }
    inlet("accounts", "set", "acme", "--suppress-deleted-users", "off", cwd=cwd)

    inlet("accounts", "suspend", "acme", cwd=cwd)
    eventually_sync(
        lambda: post(served.url, new_key, dict(event, event="H"))[0] == 403,
        what="the server to see the suspension",
    )
    inlet("accounts", "resume", "acme", cwd=cwd)
