"""The core's error hierarchy.

    InletError                      every expected failure; carries a gRPC code and a stable reason
    ├── EventRejected               the event itself is unusable: the sender must change it
    │   ├── InvalidEvent            INVALID_ARGUMENT  (bad JSON, missing/ill-typed field, bad settings)
    │   └── UnsupportedType         UNIMPLEMENTED     (unknown type, or not enabled in this deployment)
    ├── AuthError                   the key or the account
    │   ├── Unauthenticated         UNAUTHENTICATED   (missing, unknown, revoked, expired key)
    │   └── PermissionDenied        PERMISSION_DENIED (no scope, account suspended)
    ├── InvalidArgument             INVALID_ARGUMENT  (a request field of a read/admin RPC; names the field)
    ├── NotFound                    NOT_FOUND         (no such key, account, profile)
    ├── AlreadyExists               ALREADY_EXISTS    (admin: the account exists)
    ├── RateLimited                 RESOURCE_EXHAUSTED (the key's rate limit: retry later)
    └── Unavailable                 UNAVAILABLE       (maintenance mode, shutting down: retry later)
        ├── Overloaded                                (too many events in flight)
        └── StoreUnavailable                          (database locked, full, unreachable)

Anything else raised inside the core is a bug: it is logged and surfaces as INTERNAL
with no internals in the message. `reason` values are part of the API (the bridge
returns them as the `code` of its JSON error body); never rename one.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class InletError(Exception):
    """An expected failure, reported to the caller as `grpc_code` with `reason`."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class EventRejected(InletError):
    """The event cannot be accepted as sent; retrying it unchanged will not help."""


class InvalidEvent(EventRejected):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnsupportedType(EventRejected):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class AuthError(InletError):
    """The API key, its scopes or its account do not allow the call."""


class Unauthenticated(AuthError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AuthError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class InvalidArgument(InletError):
    """A request field is wrong; `field` names it (sent as a google.rpc.BadRequest)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, reason: str, field: str) -> None:
        super().__init__(message, reason)
        self.field = field


class NotFound(InletError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(InletError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class RateLimited(InletError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(InletError):
    """Not now: the caller should retry later (Segment does on 503)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class Overloaded(Unavailable):
    pass


class StoreUnavailable(Unavailable):
    """The store cannot take writes right now."""

    def __init__(self, message: str = "the event store is temporarily unavailable") -> None:
        super().__init__(message, "store_unavailable")
