"""http_bridge/sdk.py: pure parsing, merging and the verdict table of the SDK routes."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from http_bridge import sdk, sdk_text
from http_bridge.errors import BadRequest, Unauthorized, UnsupportedMediaType
from inlet.v1 import events_pb2
from service.handoff import Verdict
from tests.exact_values import EXACT_TRAITS
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


def encode(body: dict[str, Any], route: str = "/v1/batch", max_bytes: int = 1 << 20) -> list[Any]:
    text = orjson.dumps(body).decode()
    return sdk.encode_events(text, body, route, sdk.events_from(body, route, 100), max_bytes)


def test_encode_events_limits() -> None:
    assert encode({"batch": [{"a": 1}]}, max_bytes=100) == [b'{"a":1}']
    [too_large] = encode({"batch": [{"messageId": "m", "a": "x" * 100}]}, max_bytes=100)
    assert isinstance(too_large, sdk.ItemOutcome)
    assert (too_large.status, too_large.code, too_large.message_id) == (413, "event_too_large", "m")
    [not_an_object] = encode({"batch": [[1]]})
    assert isinstance(not_an_object, sdk.ItemOutcome) and not_an_object.code == "not_an_object"


def test_an_event_nested_deeper_than_orjson_writes_is_stored_as_sent() -> None:
    """orjson writes at most 254 levels; such an event is taken from the body's text."""
    depth = 300
    text = '{"batch":[{"type":"track","p":' + '{"k":' * depth + "1" + "}" * depth + "}]}"
    body = orjson.loads(text)
    [raw] = sdk.encode_events(text, body, "/v1/batch", body["batch"], 1 << 20)
    assert isinstance(raw, bytes)
    assert raw == ('{"type":"track","p":' + '{"k":' * depth + "1" + "}" * depth + "}").encode()


def body_text(event: str, route: str) -> str:
    if route in sdk.SINGLE_ROUTES:
        return event[:-1] + ',"writeKey":"k"}'
    return f'{{"batch":[{event}],"context":{{"ip":"1.2.3.4"}},"sentAt":"S","writeKey":"k"}}'


@pytest.mark.parametrize("route", ["/v1/batch", "/v1/track"])
def test_events_keep_their_numbers_as_written(route: str) -> None:
    """A parser would write `-0` as `0`, `1.50` as `1.5` and an integer beyond 64 bits
    as a float: the stored event keeps the text it was sent with."""
    properties = ",".join(f'"{key}":{text}' for key, text in EXACT_TRAITS.items())
    text = body_text(f'{{"type":"track","userId":"u","properties":{{{properties}}}}}', route)
    assert not sdk_text.numbers_round_trip(text)
    body = orjson.loads(text)
    [raw] = sdk.encode_events(text, body, route, sdk.events_from(body, route, 10), 1 << 20)
    assert isinstance(raw, bytes)
    assert f'"properties":{{{properties}}}'.encode() in raw
    assert b"writeKey" not in raw


@pytest.mark.parametrize(
    ("number", "survives"),
    [("12", True), ("12.5", True), ("0.1", True), ("-3", True), ("3.0", True), ("1e+20", True)]
    + [("-0", False), ("1.50", False), ("1e20", False), ("123456789012345678901234567890", False)],
)
def test_numbers_round_trip(number: str, survives: bool) -> None:
    text = f'{{"a":"-0 1.50 in a string","b":[{number}],"c":"\\"-0"}}'
    assert orjson.loads(text)["b"]  # valid JSON
    assert sdk_text.numbers_round_trip(text) is survives


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
members = st.sampled_from(["type", "context", "integrations", "sentAt", "writeKey", "a"])
objects = st.dictionaries(members | st.text(max_size=3), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(objects | json_scalars, min_size=1, max_size=4),
    batch=objects,
    route=st.sampled_from(["/v1/batch", "/v1/track", "/v1/t"]),
)
def test_the_text_merge_stores_what_the_parsed_merge_stores(
    events: list[Any], batch: dict[str, Any], route: str
) -> None:
    """sdk_text's merge on text gives the event sdk.with_batch_defaults gives on parsed
    values, whatever the body: the two paths of encode_events store the same event."""
    body = {**batch, "batch": events} if route == "/v1/batch" else batch
    try:
        parsed = sdk.events_from(body, route, 10)
    except BadRequest:
        return  # refused as a whole before any event is looked at
    text = orjson.dumps(body).decode()
    single = route in sdk.SINGLE_ROUTES
    defaults = sdk_text.batch_defaults(text, body, single)
    for event, event_text in zip(parsed, sdk_text.event_texts(text, single), strict=True):
        if isinstance(event, dict):
            stored = sdk_text.with_batch_defaults(
                event_text, defaults, sdk.SINGLE_ROUTES.get(route)
            )
            assert orjson.loads(stored) == sdk.with_batch_defaults(event, body)


def test_merged_objects_event_wins_and_depth_is_bounded() -> None:
    base = '{"a":1,"device":{"id":"d","type":"android"}}'
    over = '{"device":{"type":"ios"},"b":2}'
    assert orjson.loads(sdk_text.merged_objects(base, over)) == {
        "a": 1,
        "b": 2,
        "device": {"id": "d", "type": "ios"},
    }
    deep = 5000  # deeper than Python's recursion limit
    deep_base = '{"k":' * deep + '{"x":1}' + "}" * deep
    deep_over = '{"k":' * deep + '{"y":2}' + "}" * deep
    sdk_text.merged_objects(deep_base, deep_over)  # no RecursionError


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
