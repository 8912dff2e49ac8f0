"""Segment's browser SDK (@segment/analytics-next, analytics.js 2.0) in a real headless
Chromium, loaded by a page of another origin, delivering to a live Inlet.

analytics.js posts each event to `{apiHost}/{first letter of its type}` (`/v1/t`,
`/v1/i`, ...), or batches to `/v1/b` in its batching delivery, with the write key as
Basic, so every POST is preceded by a CORS preflight; its own client metrics go to
`{apiHost}/m`. The settings are given inline: nothing is fetched from Segment's CDN.
The package comes from npm into a cache folder at test time; the test is skipped
where node/npm or Chromium is absent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import CHROMIUM, NO_CHROMIUM, Page, chromium, open_page
from tests.stack import Stack
from tests.test_sdk_clients import npm_installed
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

#: The browser SDK under test: 1.84 is the first to send the write key as Basic (and so
#: to need the preflight) and `X-Retry-Count` on retries.
ANALYTICS_NEXT: Final = "@segment/analytics-next@^1.84.0"

PAGE: Final = b"""<!doctype html>
<html><head><title>shop</title><script src="/analytics-next/index.js"></script></head>
<body>a customer's page</body></html>"""

#: Loads analytics.js as Segment's docs show for a custom API host (the second argument),
#: with the source's settings inline (the first: no CDN), then sends one event of each
#: type, in order, and returns their message ids. Client metrics are sampled at 100 % and
#: flushed every 100 ms, so that `/m` is exercised too.
SEND: Final = """async (key, apiHost, strategy) => {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(
    { writeKey: key,
      cdnSettings: { integrations: { 'Segment.io': { apiKey: key } },
                     metrics: { sampleRate: 1, flushTimer: 100 } } },
    { integrations: { 'Segment.io': { apiHost, protocol: 'http',
                                      deliveryStrategy: strategy } } })
  window.failures = []
  analytics.on('error', (error) => window.failures.push(String(error.reason)))
  const ids = {}
  ids.identify = (await analytics.identify('u-1', { email: 'p@example.com' })).event.messageId
  ids.track = (await analytics.track('Order Completed', { revenue: 39.95 })).event.messageId
  ids.page = (await analytics.page('Home', { section: 'docs' })).event.messageId
  ids.group = (await analytics.group('g-1', { plan: 'pro' })).event.messageId
  ids.alias = (await analytics.alias('u-1', 'anon-1')).event.messageId
  return { ids, anonymousId: analytics.user().anonymousId() }
}"""

#: analytics.js drops an event answered 401 (a fatal error: not retried) and says why.
DENIED: Final = """async (apiHost) => {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(
    { writeKey: 'not-a-key',
      cdnSettings: { integrations: { 'Segment.io': { apiKey: 'not-a-key' } } } },
    { integrations: { 'Segment.io': { apiHost, protocol: 'http' } } })
  const ctx = await analytics.track('Denied')
  return String(ctx.failedDelivery() && ctx.failedDelivery().reason)
}"""

#: A POST with every header analytics.js sends on a retry (`X-Retry-Count` too).
RETRY: Final = """async (url) => {
  const response = await fetch(url, { method: 'POST',
    headers: { 'Content-Type': 'text/plain', 'Authorization': 'Basic ' + btoa('not-a-key:'),
               'X-Retry-Count': '1' },
    body: JSON.stringify({ event: 'Denied', userId: 'u-1' }) })
  return { status: response.status, body: await response.json(),
           requestId: response.headers.get('X-Request-Id') }
}"""

STANDARD: Final = {"strategy": "standard", "config": {}}
#: Five events fill no batch of ten: the 100 ms timeout sends them, as one request.
BATCHING: Final = {"strategy": "batching", "config": {"size": 10, "timeout": 100}}


@pytest.fixture(scope="module")
def bundle() -> Path:
    """analytics-next's browser build (its UMD bundle and the chunks it may load)."""
    folder = npm_installed(ANALYTICS_NEXT, "analytics-next-1")
    return folder / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"


@pytest.fixture
async def site(bundle: Path) -> AsyncIterator[str]:
    """A customer's web site: its own origin (another port than Inlet's)."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_static("/analytics-next/", bundle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        await server.close()


@pytest.fixture
async def browser() -> AsyncIterator[tuple[aiohttp.ClientSession, int]]:
    async with chromium() as running:
        yield running


async def customer_page(browser: tuple[aiohttp.ClientSession, int], site: str) -> Page:
    http, devtools = browser
    page, _ = await open_page(http, devtools, site)  # the socket closes with the browser
    await page.wait_for("typeof AnalyticsNext === 'object'")
    return page


async def call(page: Page, function: str, *args: Any) -> Any:
    """The result of the page's `function` (JavaScript source) applied to `args`."""
    return await page.evaluate(f"({function})(...{json.dumps(args)})")


async def stored_events(stack: Stack, ids: dict[str, str], timeout: float = 10) -> dict[str, Any]:
    """The stored payload of each event, waiting for all of them up to `timeout`."""
    account = stack.account_ids["acme"]
    missing: list[str] = []

    async def all_stored() -> dict[str, Any] | None:
        payloads = {
            kind: await stack.store.get_event_payload(account, message_id)
            for kind, message_id in ids.items()
        }
        missing[:] = sorted(kind for kind, payload in payloads.items() if payload is None)
        if missing:
            return None
        return {
            kind: json.loads(payload) for kind, payload in payloads.items() if payload is not None
        }

    return await eventually(
        all_stored, what=lambda: f"every event to be stored (missing: {missing})", timeout=timeout
    )


async def metric_samples(stack: Stack, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The bridge's samples of metric `name`, by their sorted labels."""
    async with aiohttp.ClientSession() as http, http.get(f"{stack.url}/metrics") as response:
        text = await response.text()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def requests_by_route(stack: Stack) -> dict[tuple[str, str], float]:
    samples = await metric_samples(stack, "inlet_http_requests_total")
    return {
        (labels["route"], labels["status"]): value
        for key, value in samples.items()
        for labels in [dict(key)]
    }


@pytest.mark.parametrize("strategy", [STANDARD, BATCHING], ids=["standard", "batching"])
async def test_analytics_js_delivers_every_event_from_another_origin(
    stack: Stack, site: str, browser: tuple[aiohttp.ClientSession, int], strategy: Any
) -> None:
    page = await customer_page(browser, site)
    api_host = f"127.0.0.1:{stack.bridge.port}/v1"
    sent = await call(page, SEND, stack.keys["ingest"], api_host, strategy)
    events = await stored_events(stack, sent["ids"])

    for kind, event in events.items():
        assert event["type"] == kind
        assert event["messageId"] == sent["ids"][kind]
        assert event["anonymousId"] == sent["anonymousId"]
        assert event["context"]["library"]["name"] == "analytics.js"
        assert event["context"]["page"]["url"] == site  # the page's own context
        assert "writeKey" not in event  # the key is never stored in clear
    identify, track, page_view = events["identify"], events["track"], events["page"]
    group, alias = events["group"], events["alias"]
    assert identify["userId"] == "u-1" and identify["traits"] == {"email": "p@example.com"}
    assert track["userId"] == "u-1" and track["event"] == "Order Completed"
    assert track["properties"] == {"revenue": 39.95}
    assert page_view["name"] == "Home" and page_view["properties"]["section"] == "docs"
    assert page_view["properties"]["url"] == site
    assert group["groupId"] == "g-1" and group["traits"] == {"plan": "pro"}
    assert (alias["userId"], alias["previousId"]) == ("u-1", "anon-1")
    assert await page.evaluate("window.failures") == []

    # The paths analytics.js used: each event posted once, after a preflight (204).
    routes = await requests_by_route(stack)
    posted = {path: count for (path, status), count in routes.items() if status == "200"}
    posted.pop("/v1/m", None)  # its client metrics, once they are flushed (below)
    expected = ["/v1/i", "/v1/t", "/v1/p", "/v1/g", "/v1/a"] if strategy is STANDARD else ["/v1/b"]
    assert posted == dict.fromkeys(expected, 1), routes
    assert all(routes.get((path, "204")) for path in expected), routes

    # Its client metrics (one `analytics_js.invoke` per call) are counted, never stored.

    async def invokes_counted() -> bool:
        samples = await metric_samples(stack, "inlet_sdk_client_metrics_total")
        return samples.get((("metric", "analytics_js.invoke"),), 0) >= len(events)

    await eventually(invokes_counted, what="one analytics_js.invoke client metric per call")
    assert (await requests_by_route(stack)).get(("/v1/m", "200"), 0) >= 1
    account = stack.account_ids["acme"]
    assert await stack.store.count_events(account) == len(events)


async def test_a_wrong_key_is_a_401_the_page_can_read(
    stack: Stack, site: str, browser: tuple[aiohttp.ClientSession, int]
) -> None:
    page = await customer_page(browser, site)
    api_host = f"127.0.0.1:{stack.bridge.port}/v1"
    # analytics.js can tell a 401 only when the browser lets it read the status.
    assert "401" in await call(page, DENIED, api_host)
    # The answer itself, to a POST with the headers analytics.js adds on a retry: the
    # preflight allows them all and the page reads the JSON error.
    answer = await call(page, RETRY, f"http://{api_host}/t")
    assert answer["status"] == 401 and answer["body"]["code"] == "invalid_api_key"
    assert answer["requestId"]  # an exposed header: readable too
    assert await stack.store.count_events(stack.account_ids["acme"]) == 0
