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

S = grpc.StatusCode

GRPC_TO_HTTP: Final[dict[grpc.StatusCode, int]] = {
    S.OK: 200,
    S.INVALID_ARGUMENT: 400,  # the event itself is wrong: retrying cannot help
    S.FAILED_PRECONDITION: 400,
    S.OUT_OF_RANGE: 400,
    S.UNAUTHENTICATED: 401,
    S.PERMISSION_DENIED: 403,
    S.NOT_FOUND: 404,
    S.ALREADY_EXISTS: 200,  # only ever "already stored": idempotent success
    S.RESOURCE_EXHAUSTED: 429,  # rate limit: Segment retries 429
    S.UNIMPLEMENTED: 501,  # unsupported type: Segment does not retry 501, as intended
    # Transient: all must be retried, so 503 (code.proto says 409 for ABORTED and
    # 504 for DEADLINE_EXCEEDED; 409 would be dropped by Segment).
    S.UNAVAILABLE: 503,
    S.ABORTED: 503,
    S.DEADLINE_EXCEEDED: 503,
    S.CANCELLED: 503,
    # Bugs: 500 (retried, which is right if the bug is fixed within the window).
    S.UNKNOWN: 500,
    S.INTERNAL: 500,
    S.DATA_LOSS: 500,
}

_BY_NUMBER: Final = {code.value[0]: status for code, status in GRPC_TO_HTTP.items()}

#: Statuses after which the sender should wait before retrying (Retry-After is sent).
RETRY_LATER: Final = frozenset({429, 503})


def http_status_for(code: grpc.StatusCode | int) -> int:
    """The HTTP status for a gRPC status code (enum or number); unknown codes are bugs."""
    if isinstance(code, grpc.StatusCode):
        return GRPC_TO_HTTP.get(code, 500)
    return _BY_NUMBER.get(code, 500)
