"""gRPC servicers: EventService (ingest) and AdminService (API keys).

Expected failures (InletError) leave as their gRPC code with a google.rpc.ErrorInfo
carrying the stable `reason`; anything else is a bug, logged here and reported as
INTERNAL without internals.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from inlet.v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc
from service import keys
from service.auth import Authenticator, bearer_key
from service.config import CoreConfig
from service.convert import timestamp_micros
from service.errors import InletError, InvalidEvent, NotFound
from service.ingest import Ingestor
from service.store import KeyRecord, Store

log = logging.getLogger(__name__)

ERROR_DOMAIN = "inlet.dev"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], code: int, message: str, reason: str
) -> None:
    """End the RPC with `code`, `message` and a google.rpc.ErrorInfo naming `reason`."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    status = status_pb2.Status(code=code, message=message, details=[detail])
    await context.abort_with_status(rpc_status.to_status(status))


def rpc(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map InletError to its status; turn anything else into a logged INTERNAL."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except InletError as error:
            await abort(context, error.grpc_code.value[0], error.message, error.reason)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("bug in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: abort raises")

    return wrapper


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, ingestor: Ingestor, config: CoreConfig) -> None:
        self._ingestor = ingestor
        self._config = config

    @rpc
    async def Ingest(
        self, request: events_pb2.IngestItem, context: grpc.aio.ServicerContext[Any, Any]
    ) -> events_pb2.IngestResult:
        (result,) = await self._ingestor.ingest(
            [request], bearer_key(context.invocation_metadata())
        )
        if result.outcome == events_pb2.OUTCOME_REJECTED:
            await abort(context, result.code, result.message, result.reason)
        return result

    @rpc
    async def IngestBatch(
        self, request: events_pb2.IngestBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> events_pb2.IngestBatchResponse:
        if len(request.items) > self._config.max_batch_items:
            raise InvalidEvent(
                f"a batch may hold at most {self._config.max_batch_items} items",
                "batch_too_large",
            )
        results = await self._ingestor.ingest(
            request.items, bearer_key(context.invocation_metadata())
        )
        return events_pb2.IngestBatchResponse(results=results)


def _timestamp(micros: int | None) -> timestamp_pb2.Timestamp | None:
    if micros is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


def key_message(record: KeyRecord) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        key_id=record.key_id,
        account=record.account_name,
        scopes=list(record.scopes),
        label=record.label,
        created_at=_timestamp(record.created_at_us),
        expires_at=_timestamp(record.expires_at_us),
        revoked_at=_timestamp(record.revoked_at_us),
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Key management for the caller's own account (needs the `admin` scope)."""

    def __init__(self, store: Store, auth: Authenticator) -> None:
        self._store = store
        self._auth = auth

    async def _admin(self, context: grpc.aio.ServicerContext[Any, Any]) -> KeyRecord:
        return await self._auth.authenticate(bearer_key(context.invocation_metadata()), "admin")

    @rpc
    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CreateKeyResponse:
        caller = await self._admin(context)
        try:
            scopes = keys.parse_scopes(",".join(request.scopes) or "ingest")
        except ValueError as exc:
            raise InvalidEvent(str(exc), "invalid_scope") from None
        new = keys.generate_key()
        expires = None
        if request.HasField("expires_at"):
            expires = timestamp_micros(request.expires_at, "expires_at", "invalid_expiry")
            if expires <= time.time_ns() // 1000:
                raise InvalidEvent("`expires_at` must be in the future", "invalid_expiry")
        record = await self._store.create_key(
            caller.account_id, new.key_id, new.secret_hash, scopes, request.label, expires
        )
        return admin_pb2.CreateKeyResponse(key=key_message(record), api_key=new.plaintext)

    @rpc
    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListKeysResponse:
        caller = await self._admin(context)
        records = await self._store.list_keys(caller.account_id, request.include_revoked)
        return admin_pb2.ListKeysResponse(keys=[key_message(r) for r in records])

    @rpc
    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RevokeKeyResponse:
        caller = await self._admin(context)
        record = await self._store.revoke_key(request.key_id, caller.account_id)
        if record is None:
            raise NotFound(f"no key {request.key_id!r} in this account", "key_not_found")
        self._auth.invalidate(request.key_id)
        return admin_pb2.RevokeKeyResponse(key=key_message(record))
