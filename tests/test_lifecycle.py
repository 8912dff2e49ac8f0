"""Shutdown under load: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiohttp

from tests.stack import basic, start_stack


async def test_stop_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    headers = {"Authorization": basic(stack.keys["ingest"]), "Content-Type": "application/json"}
    acknowledged: list[str] = []
    first_answers = asyncio.Event()

    async def send(session: aiohttp.ClientSession, n: int) -> None:
        event = {"type": "track", "userId": "u", "event": "Load", "messageId": f"load-{n}"}
        try:
            async with session.post(stack.url + "/segment", data=json.dumps(event),
                                    headers=headers) as reply:  # fmt: skip
                if reply.status == 200:
                    acknowledged.append((await reply.json())["messageId"])
                else:
                    assert reply.status == 503, await reply.text()  # retried by Segment
                if len(acknowledged) >= 50:
                    first_answers.set()
        except aiohttp.ClientError:
            pass  # connection refused or dropped: Segment retries those too

    async with aiohttp.ClientSession() as session:
        senders = [asyncio.create_task(send(session, n)) for n in range(400)]
        await first_answers.wait()
        await stack.stop()  # bridge drains first, then the core
        await asyncio.gather(*senders)

    assert len(acknowledged) >= 50
    db = sqlite3.connect(tmp_path / "inlet.db")
    stored = {row[0] for row in db.execute("SELECT message_id FROM events")}
    assert set(acknowledged) <= stored
