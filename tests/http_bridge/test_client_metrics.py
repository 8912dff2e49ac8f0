"""`POST /v1/m`: analytics.js's metrics about itself are counted by name, never stored."""

from __future__ import annotations

import gzip
import json
from typing import Any

import aiohttp
import pytest

from http_bridge import client_metrics
from http_bridge.errors import BadRequest
from tests.http_bridge.test_metrics import parse, value
from tests.stack import Stack

#: What analytics.js 1.84 posts (src/core/stats/remote-metrics.ts).
SENT = {
    "series": [
        {
            "type": "Counter",
            "metric": "analytics_js.invoke",
            "value": 1,
            "tags": {"library": "analytics.js", "library_version": "npm:next-1.84.3"},
        },
        {
            "type": "Counter",
            "metric": "analytics_js.integration.invoke.error",
            "value": 1,
            "tags": {
                "method": "track",
                "integration_name": "Amplitude",
                "type": "classic",
                "library": "analytics.js",
                "library_version": "npm:next-1.84.3",
            },
        },
        {"type": "Counter", "metric": "u-1@example.com", "value": 1000, "tags": {}},
    ]
}


def test_each_entry_counts_one_under_its_name_or_other() -> None:
    assert client_metrics.counted(SENT) == [
        "analytics_js.invoke",
        "analytics_js.integration.invoke.error",
        "other",
    ]
    assert client_metrics.counted({"series": []}) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "missing_field"),
        ({"series": {}}, "wrong_type"),
        ({"series": [1]}, "wrong_type"),
        ({"series": [{"metric": 5}]}, "wrong_type"),
    ],
)
def test_a_body_without_series_of_named_metrics_is_refused(body: Any, code: str) -> None:
    with pytest.raises(BadRequest) as refused:
        client_metrics.counted(body)
    assert refused.value.code == code


async def post(stack: Stack, data: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    sent = {"Content-Type": "text/plain", "Origin": "https://shop.example.com", **headers}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}{client_metrics.PATH}", data=data, headers=sent) as reply,
    ):
        assert reply.headers["Access-Control-Allow-Origin"] == "*"  # the page may read it
        return reply.status, await reply.json()


async def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.url}/metrics") as reply:
        return parse(await reply.text())


async def test_client_metrics_are_counted_by_name_and_never_stored(stack: Stack) -> None:
    before = await scrape(stack)
    assert value(before, "inlet_sdk_client_metrics_total", metric="analytics_js.invoke") == 0
    status, body = await post(stack, json.dumps(SENT).encode())  # no key: none is sent
    assert (status, body) == (200, {"message": "counted, not stored", "counted": 3})

    samples = await scrape(stack)
    counted = {
        labels: v
        for (name, labels), v in samples.items()
        if name == "inlet_sdk_client_metrics_total"
    }
    assert counted == {
        (("metric", "analytics_js.invoke"),): 1,
        (("metric", "analytics_js.invoke.error"),): 0,
        (("metric", "analytics_js.integration.invoke"),): 0,
        (("metric", "analytics_js.integration.invoke.error"),): 1,
        (("metric", "other"),): 1,  # not the value sent, nor the name
    }
    assert value(samples, "inlet_http_requests_total", route="/v1/m", status="200") == 1
    assert await stack.store.count_events(stack.account_ids["acme"]) == 0


@pytest.mark.parametrize(
    ("data", "headers", "status", "code"),
    [
        (b"{", {}, 400, "invalid_json"),
        (b'{"series": "x"}', {}, 400, "wrong_type"),
        (b"{}", {"Content-Type": "text/html"}, 415, "unsupported_media_type"),
        (b'{"series": [], "pad": "' + b"x" * 16 * 1024 + b'"}', {}, 413, "payload_too_large"),
        (
            gzip.compress(b'{"series": [], "pad": "' + b"x" * 16 * 1024 + b'"}'),
            {"Content-Encoding": "gzip"},
            413,
            "payload_too_large",
        ),
    ],
    ids=["not-json", "series-not-array", "media-type", "over-16-KiB", "over-16-KiB-inflated"],
)
async def test_bad_client_metrics_get_a_clear_4xx(
    stack: Stack, data: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    answer = await post(stack, data, **headers)
    assert (answer[0], answer[1]["code"]) == (status, code)
