"""How long a delete holds up other events on SQLite: a user with HISTORY events is deleted
while eight writers keep storing other users' events, one event a write.

    python bench/erase_stall.py [HISTORY]     # 50000 by default

Drives the store directly (no HTTP: the figure is the store's). Prints one JSON line:
the delete's own write (what its 2xx waits for), how long until the user's events are
gone from the file, and the other writes' p99 and longest wait from the delete's
submission until then. The background eraser (service/store/sqlite/eraser.py) erases a
bounded number of events a transaction, with the others' commits in between.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import orjson

from service.store.base import EventWrite
from service.store.sqlite import SqliteStore
from service.validation import canonicalise

WRITERS = 8
_LEFT = "SELECT count(*) FROM events WHERE subject = 'long' AND type = 'track'"


def event(account: int, body: Mapping[str, object]) -> EventWrite:
    raw = orjson.dumps(body)
    return EventWrite(account, "bench", canonicalise(raw, received_at_us=time.time_ns() // 1000))


async def measure(folder: Path, history: int) -> dict[str, float]:
    store = SqliteStore(folder / "inlet.db")
    await store.open()
    try:
        account = (await store.ensure_account("bench")).id
        padding = "x" * 500  # about the size of a real event's properties
        for start in range(0, history, 1000):
            await store.write_events(
                [
                    event(
                        account,
                        {
                            "type": "track",
                            "userId": "long",
                            "event": "E",
                            "messageId": f"h-{n}",
                            "properties": {"p": padding},
                        },
                    )
                    for n in range(start, min(start + 1000, history))
                ]
            )
        waits: list[float] = []
        count = 0
        running = True

        async def writer() -> None:
            nonlocal count
            while running:
                count += 1
                body = {
                    "type": "track",
                    "userId": f"u{count % 100}",
                    "event": "E",
                    "messageId": f"o-{count}",
                }
                began = time.perf_counter()
                await store.write_events([event(account, body)])
                waits.append(time.perf_counter() - began)

        writers = [asyncio.create_task(writer()) for _ in range(WRITERS)]
        await asyncio.sleep(0.5)
        waits.clear()
        began = time.perf_counter()
        await store.write_events(
            [event(account, {"type": "delete", "userId": "long", "messageId": "del"})]
        )
        delete_s = time.perf_counter() - began
        reader = sqlite3.connect(folder / "inlet.db")
        while reader.execute(_LEFT).fetchone()[0]:
            await asyncio.sleep(0.01)
        reader.close()
        gone_s = time.perf_counter() - began
        running = False
        await asyncio.gather(*writers)
    finally:
        await store.close()
    waits.sort()
    return {
        "history": history,
        "delete_write_ms": round(1000 * delete_s, 1),
        "erased_after_s": round(gone_s, 2),
        "other_writes": len(waits),
        "other_p99_ms": round(1000 * waits[int(len(waits) * 0.99) - 1], 1),
        "other_max_ms": round(1000 * waits[-1], 1),
    }


def main() -> None:
    history = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory() as folder:
        print(orjson.dumps(asyncio.run(measure(Path(folder), history))).decode())


if __name__ == "__main__":
    main()
