"""gRPC server interceptors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service.rpc import abort


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """A request that is not a valid protobuf message gets INVALID_ARGUMENT.

    grpc decodes the request before any servicer code runs, and answers a decoding
    failure (bad UTF-8 in a string field, corrupt wire bytes, Structs nested past
    protobuf's limit) with UNKNOWN and the exception text: a caller's mistake that
    looks like our bug (the bridge would map it to 500). Unary-unary methods only,
    which are all of Inlet's.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer
        behaviour = handler.unary_unary

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError as exc:
                return _Undecodable(str(exc))

        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Undecodable):
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT.value[0],
                    f"the request is not a valid protobuf message: {request.reason}",
                    "invalid_request",
                )
            return await behaviour(request, context)  # type: ignore[arg-type]  # aio stubs

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=tolerant,
            response_serializer=handler.response_serializer,
        )
