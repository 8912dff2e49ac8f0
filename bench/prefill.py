"""Fill an Inlet database before measuring: EVENTS events over gRPC IngestBatch, as fast
as it takes them (not a measurement).

    python bench/prefill.py TARGET KEY EVENTS

A store's cost per event grows with its indexes (the messageId index takes each
insert at a random place, as Segment's UUIDs are random): bench/run.py --prefill
measures Inlet on a database that has been in service for a while rather than an
empty one. The mix is the webhook's (bench/events.py: all seven types, random
messageIds). Prints one JSON line: events stored, seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import grpc
import orjson
from events import EventSource

from inlet.v1 import events_pb2, events_pb2_grpc

BATCH = 500
IN_FLIGHT = 4


async def main(target: str, key: str, events: int) -> None:
    source = EventSource(f"pre-{uuid.uuid4().hex[:8]}", redeliver=0.0)
    metadata = [("authorization", f"Bearer {key}")]
    stored = sent = 0
    started = time.monotonic()
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)

        async def worker() -> None:
            nonlocal stored, sent
            while sent < events:
                count = min(BATCH, events - sent)
                sent += count
                items = [events_pb2.IngestItem(json=source.next()) for _ in range(count)]
                reply = await stub.IngestBatch(
                    events_pb2.IngestBatchRequest(items=items), metadata=metadata, timeout=60
                )
                stored += sum(r.outcome == events_pb2.OUTCOME_STORED for r in reply.results)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    print(orjson.dumps({"stored": stored, "seconds": time.monotonic() - started}).decode())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
