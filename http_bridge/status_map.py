"""gRPC status → HTTP status, by Segment's retry rules.

Source for the canonical mapping: googleapis google/rpc/code.proto ("HTTP Mapping").
Where Segment's delivery needs something else, the row says why: Segment retries
5xx (except 501), 408 and 429 for up to four hours, and drops every other 4xx
(segment-docs partners/faqs.md, connections/destinations Retries). So a transient
fault must never become a 4xx, and a permanent one should not become a 5xx.
"""

from __future__ import annotations

from typing import Final

import grpc

GRPC_TO_HTTP: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,  # the event itself is wrong: retrying cannot help
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 200,  # only ever "already stored": idempotent success
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,  # rate limit: Segment retries 429
    grpc.StatusCode.UNIMPLEMENTED: 501,  # unsupported type: Segment does not retry 501, as intended
    # Transient: all must be retried, so 503 (code.proto says 409 for ABORTED and
    # 504 for DEADLINE_EXCEEDED; 409 would be dropped by Segment).
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.ABORTED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.CANCELLED: 503,
    # Bugs: 500 (retried, which is right if the bug is fixed within the window).
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}

_BY_NUMBER: Final = {code.value[0]: status for code, status in GRPC_TO_HTTP.items()}

#: Statuses after which the sender should wait before retrying (Retry-After is sent).
RETRY_LATER: Final = frozenset({429, 503})


def http_status_for(code: grpc.StatusCode | int) -> int:
    """The HTTP status for a gRPC status code (enum or number); unknown codes are bugs."""
    if isinstance(code, grpc.StatusCode):
        return GRPC_TO_HTTP.get(code, 500)
    return _BY_NUMBER.get(code, 500)
