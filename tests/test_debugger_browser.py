"""The debugger page in a real headless Chromium against a real `inlet serve`: it renders
the events posted during the test, and clicking one shows the request and the response.
Chromium is driven over the DevTools protocol (tests/browser.py); without it the test is
skipped, saying so.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.browser import CHROMIUM, NO_CHROMIUM, chromium, open_page
from tests.test_cli import BRIDGE_READY, free_port, inlet, post, start, stop

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


@pytest.fixture
async def browser() -> AsyncIterator[tuple[aiohttp.ClientSession, int]]:
    async with chromium() as running:
        yield running


async def test_the_debugger_page_shows_live_events_and_their_details(
    tmp_path: Path, browser: tuple[aiohttp.ClientSession, int]
) -> None:
    http, devtools = browser
    admin = inlet(
        "keys", "create", "--account", "acme", "--scope", "ingest,admin", cwd=tmp_path
    ).stdout.strip()
    server, ready = start(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--grpc", f"127.0.0.1:{free_port()}"],
        tmp_path,
        BRIDGE_READY,
    )
    url = f"http://127.0.0.1:{ready[1]}"
    try:
        event = {
            "type": "track",
            "userId": "browser-user",
            "event": "Order Completed",
            "messageId": "b-1",
            "properties": {"total": 27.5},
        }
        assert post(f"{url}/segment", admin, event)[0] == 200
        # The key travels in the URL fragment: never sent to the server.
        page, ws = await open_page(http, devtools, f"{url}/debugger#key={admin}")
        try:
            await page.wait_for("document.querySelectorAll('tr.row').length === 1")
            # Live: an event posted while the page is open appears without a reload,
            # and so does a rejected one (bad JSON never reaches the store).
            assert post(f"{url}/segment", admin, {"type": "identify"})[0] == 400
            await page.wait_for("document.querySelectorAll('tr.row').length === 2")
            rows = await page.evaluate(
                "[...document.querySelectorAll('tr.row')].map(r => r.innerText)"
            )
            assert "rejected" in rows[0] and "400" in rows[0]
            assert "Order Completed" in rows[1] and "browser-user" in rows[1]
            assert "stored" in rows[1] and "acme" in rows[1]
            assert await page.evaluate("location.hash") == ""  # the key left the URL

            await page.evaluate("document.querySelectorAll('tr.row')[1].click()")
            detail = await page.wait_for(
                "document.getElementById('detail').innerText.includes('Response from Inlet')"
                " && document.getElementById('detail').innerText"
            )
            assert '"event": "Order Completed"' in detail  # the request as received
            assert '"message": "stored"' in detail  # the response sent
            assert admin.split("_")[2] not in detail  # the key's secret is never shown

            shot = await page.call("Page.captureScreenshot", format="png")
            png = base64.b64decode(shot["data"])
            image = Image.open(io.BytesIO(png))
            assert image.width == 1280 and image.height > 400  # the viewport, not a sliver
            # A rendered page, not a blank one: many colours (text, header, highlights).
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
            assert len(colours) > 50
            (tmp_path / "debugger.png").write_bytes(png)  # kept for a look when it fails
        finally:
            await ws.close()
    finally:
        assert stop(server) == 0


async def test_the_page_asks_for_a_key_and_refuses_one_without_admin(
    tmp_path: Path, browser: tuple[aiohttp.ClientSession, int]
) -> None:
    http, devtools = browser
    ingest_only = inlet("keys", "create", "--account", "acme", cwd=tmp_path).stdout.strip()
    server, ready = start(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--grpc", f"127.0.0.1:{free_port()}"],
        tmp_path,
        BRIDGE_READY,
    )
    try:
        page, ws = await open_page(http, devtools, f"http://127.0.0.1:{ready[1]}/debugger")
        try:
            await page.wait_for("!document.getElementById('login').hidden")
            await page.evaluate(
                f"document.getElementById('key').value = {json.dumps(ingest_only)};"
                "document.getElementById('login-form').requestSubmit()"
            )
            state = await page.wait_for(
                "document.getElementById('state').innerText.includes('admin')"
                " && document.getElementById('state').innerText"
            )
            assert "`admin` scope" in state
            assert await page.evaluate("document.getElementById('app').hidden")
        finally:
            await ws.close()
    finally:
        assert stop(server) == 0
