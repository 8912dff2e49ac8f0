"""Drive the core's IngestBatch directly (no HTTP): batches of track events, K in flight.

    python bench/grpc_load.py TARGET KEY SECONDS [BATCH] [INFLIGHT] [WARMUP]

After WARMUP seconds (default 1; 0: none) of the same load, not counted, prints one JSON
line for the SECONDS measured: events sent, stored, duplicates, rejected, seconds, events/s.
bench/run.py warms up as long as for the HTTP phases (3 s): measured per second, the
first seconds against a fresh server ran at ~60 % of the rate that followed in two runs
of three (24k, 25k, 25k, then 33-41k events/s), which a 5 s phase without a warm-up
reported as 27-29k instead of 36-38k.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import grpc
import orjson

from inlet.v1 import events_pb2, events_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from events import GRPC_TRACK as TRACK


async def main(
    target: str, key: str, seconds: float, batch: int, inflight: int, warmup: float = 1.0
) -> None:
    prefix = uuid.uuid4().hex[:8]
    totals = {"sent": 0, "stored": 0, "duplicate": 0, "rejected": 0, "warmup_stored": 0}
    metadata = [("authorization", f"Bearer {key}")]

    def request() -> events_pb2.IngestBatchRequest:
        items = []
        for _ in range(batch):
            # Random, as Segment's UUIDs are: inserts land all over the messageId index.
            body = TRACK.replace(b"__MID__", f"{prefix}-{uuid.uuid4().hex}".encode())
            items.append(events_pb2.IngestItem(json=body))
        return events_pb2.IngestBatchRequest(items=items)

    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        counting = warmup <= 0
        started = time.monotonic()
        deadline = started + warmup + seconds

        async def worker() -> None:
            while time.monotonic() < deadline:
                measured = counting  # sent after the warm-up (not only answered after it)
                reply = await stub.IngestBatch(request(), metadata=metadata, timeout=30)
                if not measured:  # sent during the warm-up: stored, not measured
                    totals["warmup_stored"] += sum(
                        r.outcome == events_pb2.OUTCOME_STORED for r in reply.results
                    )
                    continue
                totals["sent"] += batch
                for result in reply.results:
                    if result.outcome == events_pb2.OUTCOME_STORED:
                        totals["stored"] += 1
                    elif result.outcome == events_pb2.OUTCOME_DUPLICATE:
                        totals["duplicate"] += 1
                    else:
                        totals["rejected"] += 1

        workers = asyncio.gather(*(worker() for _ in range(inflight)))
        if not counting:
            await asyncio.sleep(warmup)
            counting, started = True, time.monotonic()
        await workers
        elapsed = time.monotonic() - started
    print(
        orjson.dumps(
            {**totals, "seconds": elapsed, "events_per_s": totals["stored"] / elapsed}
        ).decode()
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0],
            args[1],
            float(args[2]),
            int(args[3]) if len(args) > 3 else 500,
            int(args[4]) if len(args) > 4 else 4,
            float(args[5]) if len(args) > 5 else 1.0,
        )
    )
