"""What every gRPC method of the core shares: error mapping and caller authentication.

Expected failures (InletError) leave as their gRPC code with google.rpc details: an
ErrorInfo whose `reason` is the stable error code (domain `inlet.dev`), and, for a
bad request field, a BadRequest naming the field. Anything else is a bug, logged
here and reported as INTERNAL without internals.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.auth import Authenticator, bearer_key
from service.errors import InletError, InvalidArgument
from service.store import KeyRecord

log = logging.getLogger(__name__)

ERROR_DOMAIN = "inlet.dev"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]
StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]


async def abort(
    context: Context, code: int, message: str, reason: str, field: str | None = None
) -> None:
    """End the RPC with `code`, `message`, an ErrorInfo naming `reason`, and, when a
    request `field` is to blame, a BadRequest field violation."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    details = [info]
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        bad_request = any_pb2.Any()
        bad_request.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        details.append(bad_request)
    status = status_pb2.Status(code=code, message=message, details=details)
    await context.abort_with_status(rpc_status.to_status(status))


async def _fail(context: Context, exc: Exception, method: Callable[..., object]) -> NoReturn:
    if isinstance(exc, InletError):
        field = exc.field if isinstance(exc, InvalidArgument) else None
        await abort(context, exc.grpc_code.value[0], exc.message, exc.reason, field)
    else:
        log.error("bug in %s", method.__qualname__, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("unreachable: abort raises")


def rpc(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map InletError to its status; turn anything else into a logged INTERNAL."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped or logged as a bug in _fail
            await _fail(context, exc, method)

    return wrapper


def stream_rpc(method: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """`rpc` for server-streaming methods (async generators)."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            async for message in method(self, request, context):
                yield message
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped or logged as a bug in _fail
            await _fail(context, exc, method)

    return wrapper


async def caller(auth: Authenticator, context: Context, scope: str | None) -> KeyRecord:
    """The key record of the call's `authorization: Bearer` key, which must have `scope`
    (None: any valid key)."""
    return await auth.authenticate(bearer_key(context.invocation_metadata()), scope)
