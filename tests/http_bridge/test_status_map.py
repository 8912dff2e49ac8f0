"""http_bridge/status_map.py: gRPC status → HTTP status, by Segment's retry rules."""

from __future__ import annotations

import grpc
import pytest

from http_bridge.batcher import QueueFull
from http_bridge.config import BridgeConfig
from http_bridge.core_client import call_failed
from http_bridge.handlers import CORE_FAILURES, core_unavailable
from http_bridge.status_map import GRPC_TO_HTTP, RETRY_LATER, http_status_for
from service.errors import (
    InvalidEvent,
    NotFound,
    PermissionDenied,
    StoreUnavailable,
    Unauthenticated,
    UnsupportedType,
)

TRANSIENT = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
]


def segment_retries(status: int) -> bool:
    """Segment retries 5xx except 501, 408 and 429; it drops every other 4xx."""
    return status in (408, 429) or (status >= 500 and status != 501)


def test_every_grpc_status_code_has_a_row() -> None:
    assert set(GRPC_TO_HTTP) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", TRANSIENT, ids=lambda c: c.name)
def test_transient_codes_are_503(code: grpc.StatusCode) -> None:
    assert http_status_for(code) == 503
    assert http_status_for(code) in RETRY_LATER


@pytest.mark.parametrize(
    "code", [*TRANSIENT, grpc.StatusCode.RESOURCE_EXHAUSTED], ids=lambda c: c.name
)
def test_no_transient_code_becomes_a_status_segment_drops(code: grpc.StatusCode) -> None:
    status = http_status_for(code)
    assert segment_retries(status)
    assert not (400 <= status < 500 and status not in (408, 429))


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.OK, 200),
        (grpc.StatusCode.ALREADY_EXISTS, 200),  # duplicate messageId: idempotent success
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
    ids=lambda v: v.name if isinstance(v, grpc.StatusCode) else str(v),
)
def test_status_table(code: grpc.StatusCode, status: int) -> None:
    assert http_status_for(code) == status


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED], ids=lambda c: c.name
)
def test_permanent_event_errors_are_not_retried_by_segment(code: grpc.StatusCode) -> None:
    assert not segment_retries(http_status_for(code))


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_integer_codes_map_like_the_enum(code: grpc.StatusCode) -> None:
    number = code.value[0]
    assert isinstance(number, int)
    assert http_status_for(number) == http_status_for(code)


def test_integer_code_examples() -> None:
    assert http_status_for(0) == 200
    assert http_status_for(3) == 400  # INVALID_ARGUMENT
    assert http_status_for(12) == 501  # UNIMPLEMENTED
    assert http_status_for(14) == 503  # UNAVAILABLE


@pytest.mark.parametrize("number", [-1, 17, 99, 2**31])
def test_unknown_integer_code_is_a_500(number: int) -> None:
    assert http_status_for(number) == 500


def test_retry_after_is_sent_for_429_and_503_only() -> None:
    assert RETRY_LATER == {429, 503}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidEvent("bad", "wrong_type"), 400),
        (UnsupportedType("no", "unknown_type"), 501),
        (Unauthenticated("who", "unknown_key"), 401),
        (PermissionDenied("no", "missing_scope"), 403),
        (NotFound("gone", "no_such_key"), 404),
        (StoreUnavailable(), 503),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_core_errors_reach_the_http_status_of_the_webhook_contract(
    error: Exception, status: int
) -> None:
    assert http_status_for(error.grpc_code) == status  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (QueueFull(), "overloaded"),
        (TimeoutError(), "core_timeout"),
        (ConnectionError("the batch call was cancelled"), "shutting_down"),
    ],
)
def test_every_way_a_hand_over_fails_is_a_503_to_retry(failure: Exception, code: str) -> None:
    assert isinstance(failure, CORE_FAILURES)
    answer = core_unavailable(failure, BridgeConfig(retry_after_s=7))
    assert (answer.status, answer.code, answer.headers) == (503, code, {"Retry-After": "7"})


@pytest.mark.parametrize(
    ("grpc_code", "code"),
    [
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "core_timeout",
        ),  # reached, but no answer within the deadline
        (grpc.StatusCode.UNAVAILABLE, "core_unavailable"),  # not listening, connection lost
        (grpc.StatusCode.CANCELLED, "core_unavailable"),
        (grpc.StatusCode.ABORTED, "core_unavailable"),
    ],
)
def test_a_failed_call_to_the_core_is_a_503_naming_why(
    grpc_code: grpc.StatusCode, code: str
) -> None:
    answer = call_failed(grpc_code, BridgeConfig(retry_after_s=7))
    assert (answer.status, answer.code, answer.headers) == (503, code, {"Retry-After": "7"})


def test_a_failed_call_to_the_core_for_a_bug_is_a_500() -> None:
    answer = call_failed(grpc.StatusCode.INTERNAL, BridgeConfig())
    assert (answer.status, answer.code) == (500, "internal")
