"""http_bridge/sdk.py: pure parsing, merging and the verdict table of the SDK routes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from http_bridge import sdk
from http_bridge.errors import BadRequest, Unauthorized, UnsupportedMediaType
from inlet.v1 import events_pb2
from service.handoff import Verdict
from tests.stack import basic

OK = sdk.ItemOutcome(200, sdk.STORED, "m")
DUP = sdk.ItemOutcome(200, sdk.DUPLICATE, "m")


def bad(status: int, code: str = "x") -> sdk.ItemOutcome:
    return sdk.ItemOutcome(status, sdk.REJECTED, None, code, f"{code} happened")


@pytest.mark.parametrize(
    ("outcomes", "status", "code"),
    [
        ([OK, DUP], 200, None),
        ([OK, bad(400), bad(501)], 200, None),  # permanent rejects alongside successes
        ([OK, bad(400), bad(503, "store_unavailable")], 503, "store_unavailable"),
        ([bad(429, "rate_limited"), bad(503, "overloaded")], 503, "overloaded"),
        ([OK, bad(429, "rate_limited")], 429, "rate_limited"),
        ([OK, bad(500, "internal")], 500, "internal"),
        ([bad(401, "invalid_api_key")] * 3, 401, "invalid_api_key"),
        ([bad(413, "event_too_large")], 413, "event_too_large"),
        ([bad(400, "missing_field"), bad(501, "unknown_type")], 400, "events_rejected"),
        ([bad(400, "missing_field"), bad(400, "wrong_type")], 400, "events_rejected"),
    ],
)
def test_verdict(outcomes: list[sdk.ItemOutcome], status: int, code: str | None) -> None:
    got_status, body = sdk.verdict(outcomes)
    assert got_status == status
    assert body.get("code") == code
    assert body["success"] is (status == 200)
    assert len(body["results"]) == len(outcomes)
    if status != 200:
        assert body["message"]


def test_verdict_counts_and_results() -> None:
    _, body = sdk.verdict([OK, DUP, bad(400, "missing_field")])
    assert (body["stored"], body["duplicates"], body["rejected"]) == (1, 1, 1)
    assert body["results"][2] == {
        "status": 400,
        "outcome": "rejected",
        "code": "missing_field",
        "message": "missing_field happened",
    }


def test_deep_merge_event_wins_and_depth_is_bounded() -> None:
    base = {"a": 1, "device": {"id": "d", "type": "android"}}
    over = {"device": {"type": "ios"}, "b": 2}
    assert sdk.deep_merge(base, over) == {"a": 1, "b": 2, "device": {"id": "d", "type": "ios"}}
    deep_base: dict[str, Any] = {}
    deep_over: dict[str, Any] = {}
    left, right = deep_base, deep_over
    for _ in range(5000):  # deeper than Python's recursion limit
        left["k"], right["k"] = {"x": 1}, {"y": 2}
        left, right = left["k"], right["k"]
    sdk.deep_merge(deep_base, deep_over)  # no RecursionError


def test_batch_defaults() -> None:
    body = {"context": {"ip": "1.2.3.4"}, "integrations": {"All": False}, "sentAt": "S"}
    event = {"type": "track", "writeKey": "secret", "context": None}
    assert sdk.with_batch_defaults(event, body) == {
        "type": "track",
        "context": {"ip": "1.2.3.4"},
        "integrations": {"All": False},
        "sentAt": "S",
    }
    wrong = {"type": "track", "context": "nope"}  # the event's own mistake is kept for the core
    assert sdk.with_batch_defaults(wrong, body)["context"] == "nope"


def test_events_from_routes() -> None:
    assert sdk.events_from({"type": "x", "a": 1}, "/v1/page", 10) == [{"type": "page", "a": 1}]
    assert sdk.events_from({"batch": [1, 2]}, "/v1/import", 10) == [1, 2]
    with pytest.raises(BadRequest, match="at most 1"):
        sdk.events_from({"batch": [1, 2]}, "/v1/batch", 1)


def test_write_key_from() -> None:
    assert sdk.write_key_from(basic("k1"), {"writeKey": "k2"}) == "k1"
    assert sdk.write_key_from(None, {"writeKey": "k2"}) == "k2"
    assert sdk.write_key_from("Bearer jwt", {"writeKey": "k2"}) == "k2"
    for header, body in ((None, {}), (None, {"writeKey": ""}), ("Basic ###", {"writeKey": "k"})):
        with pytest.raises(Unauthorized):
            sdk.write_key_from(header, body)
    with pytest.raises(BadRequest):
        sdk.write_key_from(basic("k1"), {"writeKey": 5})


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "text/plain;charset=UTF-8"]
)
def test_media_types_accepted(content_type: str | None) -> None:
    sdk.check_sdk_media_type(content_type)


def test_other_media_types_refused() -> None:
    with pytest.raises(UnsupportedMediaType):
        sdk.check_sdk_media_type("text/html")


def test_encode_event_limits() -> None:
    assert sdk.encode_event({"a": 1}, 100) == b'{"a":1}'
    too_large = sdk.encode_event({"messageId": "m", "a": "x" * 100}, 100)
    assert isinstance(too_large, sdk.ItemOutcome)
    assert (too_large.status, too_large.code, too_large.message_id) == (413, "event_too_large", "m")
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(300):  # orjson writes at most 254 levels
        inner["k"] = {}
        inner = inner["k"]
    too_deep = sdk.encode_event(nested, 1 << 20)
    assert isinstance(too_deep, sdk.ItemOutcome) and too_deep.code == "too_deep"


def test_outcome_of_core_results() -> None:
    rejected = Verdict(
        outcome=events_pb2.OUTCOME_REJECTED,
        code=grpc.StatusCode.UNAVAILABLE.value[0],
        reason="store_unavailable",
        message="m",
    )
    assert sdk.outcome_of(rejected, "sent-id") == sdk.ItemOutcome(
        503, sdk.REJECTED, "sent-id", "store_unavailable", "m"
    )
    nonsense = Verdict(outcome=events_pb2.OUTCOME_UNSPECIFIED)
    assert sdk.outcome_of(nonsense).status == 500


@pytest.mark.parametrize(
    "extra", [{"context": []}, {"integrations": "all"}, {"sentAt": {}}, {"sentAt": True}]
)
def test_batch_level_fields_of_the_wrong_type_fail_the_request(extra: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="batch's"):
        sdk.events_from({"batch": [{}], **extra}, "/v1/batch", 10)
