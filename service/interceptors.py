"""gRPC server interceptors."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from service.logs import REQUEST_ID, call_request_id, split_request_ids
from service.metrics import CoreMetrics
from service.rpc import abort

access_log = logging.getLogger("inlet.grpc")

Stream = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], AsyncIterator[Any]]


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """A request that is not a valid protobuf message gets INVALID_ARGUMENT.

    grpc decodes the request before any servicer code runs, and answers a decoding
    failure (bad UTF-8 in a string field, corrupt wire bytes, Structs nested past
    protobuf's limit) with UNKNOWN and the exception text: a caller's mistake that
    looks like our bug (the bridge would map it to 500). Unary requests: the unary
    methods and the server-streaming Subscribe.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError as exc:
                return _Undecodable(str(exc))

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if isinstance(request, _Undecodable):
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT.value[0],
                    f"the request is not a valid protobuf message: {request.reason}",
                    "invalid_request",
                )

        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await refuse(request, context)
                return await behaviour(request, context)  # type: ignore[arg-type]  # aio stubs

            return grpc.unary_unary_rpc_method_handler(
                checked,
                request_deserializer=tolerant,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:

            async def start(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> _StreamEnd:
                await refuse(request, context)
                return _StreamEnd()

            return grpc.unary_stream_rpc_method_handler(
                _around_stream(handler.unary_stream, start),
                request_deserializer=tolerant,
                response_serializer=handler.response_serializer,
            )
        return handler


class _StreamEnd:
    """How a server-streaming call ended, as far as the interceptor saw it."""

    __slots__ = ("completed", "failed")

    def __init__(self) -> None:
        self.completed = False  # ran to its end
        self.failed = False  # raised (not an abort): grpc answers UNKNOWN

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except Exception:
            self.failed = True
            raise
        self.completed = True  # not after a cancellation: it is no Exception


Start = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[_StreamEnd]]


def _around_stream(streaming: Any, start: Start) -> Any:
    """`streaming` wrapped in the style it is written in: an async generator (Inlet's own
    servicers) or a coroutine that writes with context.write (grpc_health's Watch).
    `start` runs first (it may abort); the _StreamEnd it returns learns how the stream
    ended."""
    if not inspect.isasyncgenfunction(streaming):

        async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with (await start(request, context)).watching():
                return await streaming(request, context)

        return writer
    generator = cast(Stream, streaming)

    async def responses(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        with (await start(request, context)).watching():
            async for response in generator(request, context):
                yield response

    return responses


_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _metadata_value(details: grpc.HandlerCallDetails, name: str) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == name and isinstance(value, str):
            return value
    return None


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Per call: the request id (from `x-request-id` metadata, else new) on every line
    logged while it runs, one access log line, and the call's metrics.

    Per call, not per event: a batch from the bridge is one call. A Subscribe stream is
    one call too: logged and counted when it ends, however it ends (a client that goes
    away included), with its whole duration.
    """

    def __init__(self, metrics: CoreMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or (handler.unary_unary is None and handler.unary_stream is None):
            return handler  # unknown method (grpc answers UNIMPLEMENTED): no label for it
        method = handler_call_details.method
        call_id = call_request_id(
            split_request_ids(_metadata_value(handler_call_details, "x-request-id"))
        )
        level = logging.DEBUG if method.startswith(_QUIET_PREFIXES) else logging.INFO
        metrics = self._metrics

        def record(code: object, started: float, peer: str) -> None:
            elapsed = time.perf_counter() - started
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            metrics.rpc(method, name, elapsed)
            access_log.log(
                level,
                "%s %s",
                method,
                name,
                extra={
                    "fields": {
                        "method": method,
                        "code": name,
                        "duration_ms": round(elapsed * 1000, 3),
                        "peer": peer,
                    }
                },
            )

        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = REQUEST_ID.set(call_id)
                started = time.perf_counter()
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = await behaviour(request, context)  # type: ignore[arg-type]
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    record(code, started, context.peer())
                    REQUEST_ID.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                observed,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        async def watch(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> _StreamEnd:
            """Record the call when it is over, however it ends: a client that goes away
            leaves a generator suspended (finalised only when collected), so the end is
            taken from the call, not from the generator."""
            end, started, peer = _StreamEnd(), time.perf_counter(), context.peer()

            def ended(_: object) -> None:
                code = context.code()  # set by an abort
                if code is None:
                    code = (
                        grpc.StatusCode.OK
                        if end.completed
                        else grpc.StatusCode.UNKNOWN
                        if end.failed
                        else grpc.StatusCode.CANCELLED
                    )
                token = REQUEST_ID.set(call_id)
                try:
                    record(code, started, peer)
                finally:
                    REQUEST_ID.reset(token)

            context.add_done_callback(ended)  # type: ignore[arg-type]  # stubs: a class
            REQUEST_ID.set(call_id)  # this call's task: its own context
            return end

        observed_stream = _around_stream(handler.unary_stream, watch)
        return grpc.unary_stream_rpc_method_handler(
            observed_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
