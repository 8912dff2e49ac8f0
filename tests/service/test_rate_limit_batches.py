"""The per-key rate limit with batches (SDK batches, the bridge's coalesced calls)."""

from __future__ import annotations

from pathlib import Path

import grpc
import orjson

from inlet.v1 import events_pb2, events_pb2_grpc
from service.config import CoreConfig
from tests.service.test_grpc import bearer
from tests.stack import start_stack


async def test_a_batch_larger_than_the_burst_is_stored_then_the_key_waits(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, CoreConfig(listen="127.0.0.1:0", rate_limit_per_key=5))
    try:
        async with grpc.aio.insecure_channel(stack.core_target) as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)

            async def batch(prefix: str, n: int) -> list[int]:
                items = [
                    events_pb2.IngestItem(
                        json=orjson.dumps(
                            {
                                "type": "track",
                                "userId": "u",
                                "event": "E",
                                "messageId": f"{prefix}{i}",
                            }
                        )
                    )
                    for i in range(n)
                ]
                response = await stub.IngestBatch(
                    events_pb2.IngestBatchRequest(items=items),
                    metadata=bearer(stack.keys["ingest"]),
                )
                return [r.outcome for r in response.results]

            # 50 events at 5/s: the whole batch goes in (a retry of it would too)...
            assert await batch("a", 50) == [events_pb2.OUTCOME_STORED] * 50
            # ...and the key has spent ten seconds' worth: the next call waits.
            assert await batch("b", 1) == [events_pb2.OUTCOME_REJECTED]
    finally:
        await stack.stop()
