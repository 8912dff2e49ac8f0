"""The bridge's `Core` when core and bridge share one process (`inlet serve`).

The same contract as gRPC's IngestItem/IngestResult, minus the hop (and, with
service/handoff.py's tuples, minus the protobuf messages): a grpc.aio call
costs ~0.4-0.9 ms of CPU per batch on the project's 2-core machines (bench/), as
much as validating and storing a dozen events. Internal services still reach the
core over gRPC; only the bridge in the same process takes this path.
"""

from __future__ import annotations

from collections.abc import Sequence

from http_bridge.errors import Forbidden, Unauthorized, Unavailable
from inlet.v1 import admin_pb2
from service.errors import AuthError, PermissionDenied
from service.errors import Unavailable as CoreUnavailable
from service.handoff import Submission, Verdict
from service.messages import key_message
from service.server import CoreServer


class InProcessCore:
    """Implements http_bridge.core_client.Core on a CoreServer in this process."""

    def __init__(self, core: CoreServer, retry_after_s: int = 5) -> None:
        self._core = core
        self._retry_after_s = retry_after_s

    async def ingest_batch(
        self, items: list[Submission], request_ids: Sequence[str] = ()
    ) -> list[Verdict]:
        return await self._core.ingestor.ingest(items, request_ids=request_ids)

    async def whoami(self, api_key: str) -> admin_pb2.ApiKey:
        try:
            return key_message(await self._core.auth.authenticate(api_key, None))
        except PermissionDenied as error:
            raise Forbidden(error.message, error.reason) from None
        except AuthError:
            raise Unauthorized("the API key is not valid", "invalid_api_key") from None
        except CoreUnavailable as error:
            raise Unavailable(error.message, error.reason, self._retry_after_s) from None

    async def ready(self) -> bool:
        return self._core.serving

    async def close(self) -> None:
        """Nothing to close: the core's lifecycle belongs to whoever started it."""
