"""Headless Chromium for tests, driven over the DevTools protocol (a WebSocket; aiohttp's
client), so no browser-automation package is needed. `.ci/install` installs Debian's
`chromium`; test modules skip with `NO_CHROMIUM` where it is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from tests.test_cli import free_port
from tests.waiting import eventually

CHROMIUM: Final = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM: Final = "no chromium on this machine (.ci/install installs Debian's)"


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

    async def _evaluate(self, expression: str) -> dict[str, Any]:
        return await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )

    async def evaluate(self, expression: str) -> Any:
        """The value of `expression`, awaited when it is a promise; a thrown error fails."""
        result = await self._evaluate(expression)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll `expression` until it is truthy (an error, say while the page is still
        loading, counts as not yet)."""

        async def value() -> Any:
            result = await self._evaluate(expression)
            return "exceptionDetails" not in result and result["result"].get("value")

        return await eventually(value, what=f"`{expression}` in the page", timeout=timeout)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[tuple[aiohttp.ClientSession, int]]:
    """A headless Chromium of its own (fresh profile): an HTTP session and its DevTools port."""
    assert CHROMIUM is not None
    port = free_port()
    profile = tempfile.mkdtemp(prefix="inlet-chromium-")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,720",
        f"--remote-debugging-port={port}",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def listening() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/version"):
                        return True
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(listening, what="Chromium's DevTools port", timeout=30)
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
