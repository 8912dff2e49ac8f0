"""The debugger page in a real headless Chromium against a real `inlet serve`: it renders
the events posted during the test, and clicking one shows the request and the response.

Chromium is driven over the DevTools protocol (a WebSocket; aiohttp's client), so no
browser-automation package is needed. `.ci/run` installs Debian's `chromium`; without
it the test is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from PIL import Image

from tests.test_cli import BRIDGE_READY, inlet, post, start, stop
from tests.test_cli_read import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's)"
)


class Page:
    """One browser tab, spoken to over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        id = next(self._ids)
        await self._ws.send_json({"id": id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json(timeout=30)
            if message.get("id") == id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll `expression` until it is truthy (the page updates itself every second)."""
        async with asyncio.timeout(timeout):
            while not (value := await self.evaluate(expression)):
                await asyncio.sleep(0.1)
        return value


@pytest.fixture
async def browser() -> AsyncIterator[tuple[aiohttp.ClientSession, int]]:
    assert CHROMIUM is not None
    port = free_port()
    profile = tempfile.mkdtemp(prefix="inlet-chromium-")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--window-size=1280,720", f"--remote-debugging-port={port}",
        f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/json/version"):
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            yield http, port
    finally:
        process.kill()
        await process.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def open_page(http: aiohttp.ClientSession, port: int, url: str) -> tuple[Page, Any]:
    # Quoted: the page URL's own fragment must not end the DevTools URL.
    async with http.put(f"http://127.0.0.1:{port}/json/new?{quote(url, safe='')}") as response:
        target = await response.json()
    ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
    page = Page(ws)
    await page.call("Page.enable")
    return page, ws


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
        event = {"type": "track", "userId": "browser-user", "event": "Order Completed",
                 "messageId": "b-1", "properties": {"total": 27.5}}  # fmt: skip
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
