"""The bridge's `Core` when core and bridge share one process (`inlet serve`).

The same IngestItem/IngestResult contract as gRPC, minus the hop: a grpc.aio call
costs ~0.4-0.9 ms of CPU per batch on the project's 2-core machines (bench/), as
much as validating and storing a dozen events. Internal services still reach the
core over gRPC; only the bridge in the same process takes this path.
"""

from __future__ import annotations

from inlet.v1 import events_pb2
from service.server import CoreServer


class InProcessCore:
    """Implements http_bridge.core_client.Core on a CoreServer in this process."""

    def __init__(self, core: CoreServer) -> None:
        self._core = core

    async def ingest_batch(
        self, items: list[events_pb2.IngestItem]
    ) -> list[events_pb2.IngestResult]:
        return await self._core.ingestor.ingest(items)

    async def ready(self) -> bool:
        return self._core.serving

    async def close(self) -> None:
        """Nothing to close: the core's lifecycle belongs to whoever started it."""
