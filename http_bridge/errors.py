"""The bridge's error hierarchy: each error is one HTTP answer.

    BridgeError                 status, stable `code`, message (+ headers)
    ├── BadRequest              400  malformed settings header
    ├── Unauthorized            401  Authorization missing, not Basic, undecodable
    ├── Forbidden               403  a valid key without the scope (the debugger needs `admin`)
    ├── NotFound                404  (debugger) no such recorded exchange
    ├── RequestTimeout          408  the body did not arrive in time (slow client; Segment retries 408)
    ├── PayloadTooLarge         413  body over the limit (checked while reading)
    ├── UnsupportedMediaType    415  Content-Type not JSON
    ├── Unavailable             503  core unreachable, too slow, draining, overloaded (+ Retry-After)
    └── Internal                500  a bug on our side, including a bad answer from the core

Errors about the event itself come from the core as gRPC codes and are mapped
by status_map.py, not raised here.
"""

from __future__ import annotations

from typing import ClassVar, Final

#: RFC 9110: a 401 carries a challenge naming the scheme to use.
CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="inlet"'}


class BridgeError(Exception):
    status: ClassVar[int] = 500

    def __init__(self, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.headers = headers or {}


class BadRequest(BridgeError):
    status = 400


class Unauthorized(BridgeError):
    status = 401

    def __init__(
        self,
        message: str,
        code: str = "invalid_authorization",
        challenge: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code, dict(challenge or CHALLENGE))


class Forbidden(BridgeError):
    status = 403


class NotFound(BridgeError):
    status = 404


class RequestTimeout(BridgeError):
    status = 408


class PayloadTooLarge(BridgeError):
    status = 413


class UnsupportedMediaType(BridgeError):
    status = 415


class Unavailable(BridgeError):
    """Transient: Segment retries 503 for hours, so nothing is lost."""

    status = 503

    def __init__(self, message: str, code: str, retry_after_s: int) -> None:
        super().__init__(message, code, {"Retry-After": str(retry_after_s)})


class Internal(BridgeError):
    status = 500
