"""`inlet send-test`: play Segment against a destination, like the Developer Portal's
"Send Test Events": real Spec payloads, exactly Segment's headers, and the request and
the response shown side by side; with `--count`, a load run with a summary.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import json
import shutil
import statistics
import sys
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, TextIO

import aiohttp

from inlet_tools.contract.scenarios import segment_headers

#: The realistic payload sent for each call type (Segment's own Spec examples).
SAMPLE_FILES: Final = {
    "identify": "identify_spec_full.json",
    "track": "track_order_completed.json",
    "page": "page_delivered_analyticsjs.json",
    "screen": "screen_spec_full.json",
    "group": "group_spec_full.json",
    "alias": "alias_spec_full.json",
    "delete": "delete_partner_spec.json",
}


def sample(kind: str) -> dict[str, Any]:
    text = (importlib.resources.files("inlet_tools") / "samples" / SAMPLE_FILES[kind]).read_text()
    event: dict[str, Any] = json.loads(text)
    return event


def fresh(event: dict[str, Any]) -> dict[str, Any]:
    """The event with a new messageId, so that every send is stored, not deduplicated."""
    return {**event, "messageId": f"send-test-{uuid.uuid4()}"}


@dataclass(frozen=True)
class Exchange:
    request_headers: dict[str, str]
    body: bytes
    status: int | None
    reason: str
    response_headers: dict[str, str]
    response_body: bytes
    seconds: float
    error: str = ""


async def send(
    session: aiohttp.ClientSession, url: str, api_key: str, settings: str, event: dict[str, Any]
) -> Exchange:
    headers = segment_headers(api_key, settings)
    body = json.dumps(event).encode()
    started = time.monotonic()
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as reply:
            answer = await reply.read()
            return Exchange(
                headers,
                body,
                reply.status,
                reply.reason or "",
                dict(reply.headers),
                answer,
                time.monotonic() - started,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Exchange(
            headers,
            body,
            None,
            "",
            {},
            b"",
            time.monotonic() - started,
            f"{type(exc).__name__}: {exc}",
        )


def _pretty(body: bytes) -> list[str]:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False).splitlines()
    except ValueError:
        return body.decode("utf-8", "replace").splitlines()


def side_by_side(url: str, exchange: Exchange, width: int | None = None) -> str:
    """ "Request from Segment" | "Response from destination", as the Developer Portal shows."""
    column = max(30, ((width or shutil.get_terminal_size((160, 24)).columns) - 3) // 2)
    left = ["Request from Segment", "", f"POST {url}"]
    left += [f"{name}: {value}" for name, value in exchange.request_headers.items()]
    left += ["", *_pretty(exchange.body)]
    right = ["Response from destination", ""]
    if exchange.status is None:
        right += [f"no answer: {exchange.error}"]
    else:
        right += [f"HTTP {exchange.status} {exchange.reason}  ({exchange.seconds * 1000:.1f} ms)"]
        right += [f"{name}: {value}" for name, value in exchange.response_headers.items()]
        right += ["", *_pretty(exchange.response_body)]

    def wrap(lines: list[str]) -> list[str]:
        return [part for line in lines for part in (textwrap.wrap(line, column) or [""])]

    left, right = wrap(left), wrap(right)
    rows = max(len(left), len(right))
    left += [""] * (rows - len(left))
    right += [""] * (rows - len(right))
    return "\n".join(f"{a:<{column}} | {b}" for a, b in zip(left, right, strict=True))


async def run_once(
    url: str, api_key: str, settings: str, events: list[dict[str, Any]], out: TextIO
) -> bool:
    """Send each event once and show it; True if every answer was a 2xx."""
    ok = True
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for event in events:
            exchange = await send(session, url, api_key, settings, fresh(event))
            print(side_by_side(url, exchange), file=out, end="\n\n")
            ok &= exchange.status is not None and 200 <= exchange.status < 300
    return ok


async def run_load(
    url: str,
    api_key: str,
    settings: str,
    events: list[dict[str, Any]],
    count: int,
    rate: float,
    out: TextIO,
) -> bool:
    """Send `count` events at about `rate` per second; a progress bar, then a summary."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    in_flight = asyncio.Semaphore(64)
    progress = sys.stderr.isatty()
    started = time.monotonic()

    async def one(session: aiohttp.ClientSession, number: int) -> None:
        async with in_flight:
            exchange = await send(
                session, url, api_key, settings, fresh(events[number % len(events)])
            )
        statuses[str(exchange.status) if exchange.status else "no answer"] += 1
        latencies.append(exchange.seconds)
        done = sum(statuses.values())
        if progress and (done % max(1, count // 50) == 0 or done == count):
            filled = 40 * done // count
            print(
                f"\r[{'#' * filled}{'.' * (40 - filled)}] {done}/{count}", end="", file=sys.stderr
            )

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = []
        for number in range(count):
            if rate > 0:  # pace the starts
                await asyncio.sleep(max(0.0, started + number / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(session, number)))
        await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    if progress:
        print(file=sys.stderr)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"sent {count} events in {elapsed:.1f} s ({count / elapsed:.0f}/s)", file=out)
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())), file=out)
    print(
        f"latency: p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms",
        file=out,
    )
    return all(key.startswith("2") for key in statuses)


def settings_header(settings_json: str | None) -> str:
    """`X-Segment-Settings` for settings given as JSON text (base64 of the object)."""
    if not settings_json:
        return ""
    parsed = json.loads(settings_json)
    if not isinstance(parsed, dict):
        raise ValueError("--settings must be a JSON object")  # noqa: TRY004 - a usage error
    return base64.b64encode(json.dumps(parsed).encode()).decode()
