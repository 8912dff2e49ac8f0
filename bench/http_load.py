"""Built-in HTTP load generator (used where wrk is not installed): N connections, closed loop.

    python bench/http_load.py URL KEY CONNECTIONS SECONDS PREFIX [MIX]

MIX is one of events.MIXES (default `bench`).

Prints one JSON line: requests, statuses, duplicates, 503s without Retry-After, seconds,
latency percentiles (ms).
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from events import SETTINGS_HEADER, EventSource


async def main(
    url: str, key: str, connections: int, seconds: float, prefix: str, mix: str = "bench"
) -> None:
    source = EventSource(prefix, mix=mix)
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "X-Segment-Settings": SETTINGS_HEADER,
        "Content-Type": "application/json",
        "User-Agent": "Segment.io/1.0",
    }
    statuses: Counter[int] = Counter()
    duplicates = no_retry_after = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal duplicates, no_retry_after
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.post(url, data=source.next(), headers=headers) as reply:
                body = await reply.read()
            latencies.append(time.perf_counter() - started)
            statuses[reply.status] += 1
            if reply.status == 200 and b'"duplicate"' in body:
                duplicates += 1
            elif reply.status == 503 and "Retry-After" not in reply.headers:
                no_retry_after += 1

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000

    print(
        orjson.dumps(
            {
                "requests": len(latencies),
                "statuses": {str(k): v for k, v in statuses.items()},
                "duplicates": duplicates,
                "no_retry_after": no_retry_after,
                "seconds": elapsed,
                "latency_ms": {"p50": pct(50), "p99": pct(99), "p99.9": pct(99.9)},
            }
        ).decode()
    )


if __name__ == "__main__":
    url, key, connections, seconds, prefix = sys.argv[1:6]
    mix = sys.argv[6] if len(sys.argv) > 6 else "bench"
    asyncio.run(main(url, key, int(connections), float(seconds), prefix, mix))
