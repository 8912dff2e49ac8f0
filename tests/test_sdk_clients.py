"""Segment's own SDKs, pointed at a live Inlet: only the host and the write key change.

segment-analytics-python runs in this process (it is in the test extra);
@segment/analytics-node is installed with npm into a cache folder at test time and
runs under node, skipped where node or npm is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from segment.analytics import Client

from tests.stack import LiveStack

#: The Node SDK's major version under test (Segment's current one).
ANALYTICS_NODE = "@segment/analytics-node@^3.1.0"


def stored(live: LiveStack, message_id: str) -> dict[str, Any] | None:
    account = live.stack.account_ids["acme"]
    payload = live.run(live.stack.store.get_event_payload(account, message_id))
    return None if payload is None else json.loads(payload)


def count(live: LiveStack) -> int:
    return live.run(live.stack.store.count_events(live.stack.account_ids["acme"]))


def check_stored(live: LiveStack, ids: dict[str, str], library: str, before: int) -> None:
    """Each event once, with the type, ids and fields the SDK was given."""
    assert count(live) == before + len(ids)  # once each: nothing else, nothing twice
    events = {kind: stored(live, message_id) for kind, message_id in ids.items()}
    missing = [kind for kind, event in events.items() if event is None]
    assert not missing, f"not stored: {missing}"
    identify, track, page = events["identify"], events["track"], events["page"]
    screen, group, alias = events["screen"], events["group"], events["alias"]
    assert identify and track and page and screen and group and alias
    for kind, event in events.items():
        assert event is not None and event["type"] == kind
        assert event["context"]["library"]["name"] == library
        assert "writeKey" not in event  # the key is never stored in clear
    assert identify["userId"] == "u-1" and identify["traits"] == {"email": "p@example.com"}
    assert track["event"] == "Order Completed" and track["properties"]["revenue"] == 39.95
    assert page["name"] == "Home" and page["properties"]["path"] == "/"
    assert screen["name"] == "Settings"
    assert group["groupId"] == "g-1" and group["traits"] == {"plan": "pro"}
    assert (alias["previousId"], alias["userId"]) == ("anon-1", "u-1")


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_segment_analytics_python(live: LiveStack, gzip: bool) -> None:
    errors: list[Any] = []
    before = count(live)
    client = Client(
        write_key=live.stack.keys["ingest"],
        host=live.stack.url,
        gzip=gzip,
        on_error=lambda error, batch: errors.append((error, batch)),
        max_retries=1,
        upload_interval=0.05,
    )
    ids = {
        kind: f"py-{kind}-{uuid.uuid4()}"
        for kind in ("identify", "track", "page", "screen", "group", "alias")
    }
    client.identify("u-1", {"email": "p@example.com"}, message_id=ids["identify"])
    client.track("u-1", "Order Completed", {"revenue": 39.95}, message_id=ids["track"])
    client.page("u-1", name="Home", properties={"path": "/"}, message_id=ids["page"])
    client.screen("u-1", name="Settings", message_id=ids["screen"])
    client.group("u-1", "g-1", {"plan": "pro"}, message_id=ids["group"])
    client.alias("anon-1", "u-1", message_id=ids["alias"])
    client.shutdown()  # flushes, then stops the consumer thread
    assert errors == []
    check_stored(live, ids, "analytics-python", before)


def test_segment_analytics_python_reports_a_wrong_key(live: LiveStack) -> None:
    errors: list[Any] = []
    client = Client(
        write_key="not-a-key",
        host=live.stack.url,
        on_error=lambda error, batch: errors.append(error),
        max_retries=1,
        upload_interval=0.05,
    )
    client.track("u-1", "Denied", message_id=f"py-denied-{uuid.uuid4()}")
    client.shutdown()
    # A 401 with `code` and `message` is a fatal error to the SDK: reported, not retried.
    assert len(errors) == 1
    assert (errors[0].status, errors[0].code) == (401, "invalid_api_key")


NODE_SCRIPT = """
const { Analytics } = require('@segment/analytics-node')
const [host, writeKey, prefix] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, maxRetries: 1, flushInterval: 50 })
const errors = []
analytics.on('error', (err) => errors.push(String(err && (err.reason || err.message || err))))
const ids = {}
for (const kind of ['identify', 'track', 'page', 'screen', 'group', 'alias']) {
  ids[kind] = `${prefix}-${kind}`
}
analytics.identify({ userId: 'u-1', traits: { email: 'p@example.com' }, messageId: ids.identify })
analytics.track({ userId: 'u-1', event: 'Order Completed', properties: { revenue: 39.95 },
                  messageId: ids.track })
analytics.page({ userId: 'u-1', name: 'Home', properties: { path: '/' }, messageId: ids.page })
analytics.screen({ userId: 'u-1', name: 'Settings', messageId: ids.screen })
analytics.group({ userId: 'u-1', groupId: 'g-1', traits: { plan: 'pro' }, messageId: ids.group })
analytics.alias({ previousId: 'anon-1', userId: 'u-1', messageId: ids.alias })
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  console.log(JSON.stringify({ ids, errors }))
})
"""


def npm_installed(spec: str, folder_name: str) -> Path:
    """A cache folder with the npm package `spec` installed (kept across runs); skips the
    test where node or npm is absent."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"Node.js (node and npm) is not installed: this test needs {spec}")
    name = spec.rpartition("@")[0]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = cache / "inlet-tests" / folder_name
    if not (folder / "node_modules" / name).is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"private": true}')
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", spec],
            cwd=folder,
            check=True,
            timeout=300,
        )
    return folder


@pytest.fixture(scope="session")
def analytics_node() -> Path:
    """A folder with @segment/analytics-node installed."""
    return npm_installed(ANALYTICS_NODE, "analytics-node-3")


def test_segment_analytics_node(live: LiveStack, analytics_node: Path) -> None:
    script = analytics_node / "send.js"
    script.write_text(NODE_SCRIPT)
    prefix = f"node-{uuid.uuid4()}"
    before = count(live)
    result = subprocess.run(
        ["node", str(script), live.stack.url, live.stack.keys["ingest"], prefix],
        cwd=analytics_node,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    check_stored(live, report["ids"], "@segment/analytics-node", before)


def test_a_python_sdk_batch_with_one_invalid_event_stores_the_others(live: LiveStack) -> None:
    errors: list[Any] = []
    before = count(live)
    client = Client(
        write_key=live.stack.keys["ingest"],
        host=live.stack.url,
        on_error=lambda error, batch: errors.append(error),
        max_retries=1,
        upload_interval=0.5,
        upload_size=10,
    )
    ids = [f"py-mixed-{i}-{uuid.uuid4()}" for i in range(3)]
    client.track("u-1", "First", message_id=ids[0])
    # The SDK only asserts `event` is a string: an empty one reaches Inlet, which
    # rejects that event alone ("`event` is required").
    client.track("u-1", "", message_id=ids[1])
    client.track("u-1", "Third", message_id=ids[2])
    client.shutdown()
    assert errors == []  # the batch as a whole succeeded (200)
    assert count(live) == before + 2
    assert stored(live, ids[0]) is not None and stored(live, ids[2]) is not None
    assert stored(live, ids[1]) is None
