"""Browsers (analytics.js) may read the answers of the SDK routes, and only of those."""

from __future__ import annotations

import aiohttp
import pytest

from tests.stack import Stack, basic

ORIGIN = {"Origin": "https://shop.example.com"}


async def test_sdk_answers_are_readable_by_any_page_errors_included(stack: Stack) -> None:
    body = (
        b'{"type":"track","userId":"u1","event":"E","writeKey":"%s"}'
        % stack.keys["ingest"].encode()
    )
    async with aiohttp.ClientSession() as http:
        # analytics.js: text/plain, no preflight; the answer must carry the CORS header.
        headers = {**ORIGIN, "Content-Type": "text/plain"}
        async with http.post(f"{stack.url}/v1/track", data=body, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        async with http.post(f"{stack.url}/v1/track", data=b"{", headers=headers) as response:
            assert response.status == 400
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        # The webhook is for Segment's servers, not for pages.
        webhook = {
            **ORIGIN,
            "Authorization": basic(stack.keys["ingest"]),
            "Content-Type": "application/json",
        }
        async with http.post(f"{stack.url}/segment", data=b"{}", headers=webhook) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/t", "/v1/b", "/v1/m"])
async def test_preflight_allows_a_post_with_what_analytics_js_sends(
    stack: Stack, path: str
) -> None:
    # analytics.js ≥ 1.84 sends the key as Basic, and X-Retry-Count when it retries.
    headers = {
        **ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-retry-count",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.options(f"{stack.url}{path}", headers=headers) as response,
    ):
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        allowed = response.headers["Access-Control-Allow-Headers"].lower().split(", ")
        assert {"authorization", "content-type", "x-retry-count"} <= set(allowed)
