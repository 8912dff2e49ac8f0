"""service/convert.py: typed `inlet.v1.Event` → the Segment Spec JSON object."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from inlet.v1 import events_pb2
from service.convert import event_to_spec
from service.errors import InletError, InvalidEvent
from service.validation import canonicalise

RECEIVED_US = 1_700_000_000_000_000
# 2020-05-09T23:54:49.209808489Z
WHEN = timestamp_pb2.Timestamp(seconds=1_589_068_489, nanos=209_808_489)
WHEN_TEXT = "2020-05-09T23:54:49.209Z"
WHEN_US = 1_589_068_489_209_000


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


TRAITS = {
    "email": "ada@example.com",
    "plan": "pro",
    "logins": 3,
    "tags": ["a", None, True],
    "address": {"city": "London"},
}
PROPERTIES = {"revenue": 25.5, "currency": "USD", "products": [{"sku": "45790-32"}]}

CASES = [
    pytest.param(
        events_pb2.Event(
            message_id="m1",
            user_id="u1",
            anonymous_id="a1",
            identify=events_pb2.Identify(traits=struct(TRAITS)),
        ),
        {
            "type": "identify",
            "messageId": "m1",
            "userId": "u1",
            "anonymousId": "a1",
            "traits": TRAITS,
        },
        id="identify",
    ),
    pytest.param(
        events_pb2.Event(
            message_id="m2",
            user_id="u1",
            track=events_pb2.Track(event="Order Completed", properties=struct(PROPERTIES)),
        ),
        {
            "type": "track",
            "messageId": "m2",
            "userId": "u1",
            "event": "Order Completed",
            "properties": PROPERTIES,
        },
        id="track",
    ),
    pytest.param(
        events_pb2.Event(
            anonymous_id="a1",
            page=events_pb2.Page(
                name="Pricing", category="Docs", properties=struct({"path": "/pricing"})
            ),
        ),
        {
            "type": "page",
            "anonymousId": "a1",
            "name": "Pricing",
            "category": "Docs",
            "properties": {"path": "/pricing"},
        },
        id="page",
    ),
    pytest.param(
        events_pb2.Event(user_id="u1", screen=events_pb2.Screen(name="Home", category="Main")),
        {"type": "screen", "userId": "u1", "name": "Home", "category": "Main"},
        id="screen",
    ),
    pytest.param(
        events_pb2.Event(
            user_id="u1", group=events_pb2.Group(group_id="g1", traits=struct({"name": "Acme"}))
        ),
        {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}},
        id="group",
    ),
    pytest.param(
        events_pb2.Event(user_id="u1", alias=events_pb2.Alias(previous_id="p1")),
        {"type": "alias", "userId": "u1", "previousId": "p1"},
        id="alias",
    ),
    pytest.param(
        events_pb2.Event(user_id="u1", delete=events_pb2.Delete()),
        {"type": "delete", "userId": "u1"},
        id="delete",
    ),
]


@pytest.mark.parametrize(("event", "expected"), CASES)
def test_each_call_type_converts_to_its_spec_object(
    event: events_pb2.Event, expected: dict[str, Any]
) -> None:
    assert event_to_spec(event) == expected


@pytest.mark.parametrize(("event", "expected"), CASES)
def test_converted_event_passes_validation_like_webhook_traffic(
    event: events_pb2.Event, expected: dict[str, Any]
) -> None:
    canonical = canonicalise(orjson.dumps(event_to_spec(event)), received_at_us=RECEIVED_US)
    assert canonical.type == expected["type"]
    assert canonical.user_id == expected.get("userId")
    assert canonical.anonymous_id == expected.get("anonymousId")
    assert canonical.group_id == expected.get("groupId")
    assert canonical.previous_id == expected.get("previousId")
    assert canonical.name == expected.get("event", expected.get("name"))
    if "messageId" in expected:
        assert canonical.message_id == expected["messageId"]


def test_struct_numbers_keep_their_value() -> None:
    spec = event_to_spec(
        events_pb2.Event(
            user_id="u",
            identify=events_pb2.Identify(traits=struct({"logins": 3, "score": 2.5, "big": 1e15})),
        )
    )
    assert spec["traits"] == {"logins": 3, "score": 2.5, "big": 1e15}


def test_whole_numbers_within_2_to_the_53_are_written_as_json_integers() -> None:
    """Struct numbers are doubles; the stored JSON writes `3`, as the JSON form of the
    same event would, not `3.0`. Beyond 2^53 a whole double may stand for another integer,
    so it stays a double."""
    values = {
        "logins": 3,
        "negative": -7,
        "zero": 0.0,
        "negativeZero": -0.0,
        "score": 2.5,
        "limit": 2**53,
        "beyond": 2**53 + 2,
        "list": [1, 2.5, {"n": 4}],
    }
    spec = event_to_spec(
        events_pb2.Event(user_id="u", identify=events_pb2.Identify(traits=struct(values)))
    )
    assert orjson.dumps(spec["traits"], option=orjson.OPT_SORT_KEYS) == (
        b'{"beyond":9007199254740994.0,"limit":9007199254740992,"list":[1,2.5,{"n":4}],'
        b'"logins":3,"negative":-7,"negativeZero":-0.0,"score":2.5,"zero":0}'
    )


def no_kind(values: dict[str, Any], *path: str | int) -> struct_pb2.Struct:
    """`struct(values)` with the Value at `path` emptied (no kind set), as a client that
    misspells `number_value` sends it."""
    message = struct(values)
    target: Any = message
    for step in path[:-1]:
        target = target[step]
    last = path[-1]
    if isinstance(last, int):
        target.values[last].Clear()
    else:
        target.fields[last].Clear()
    return message


@pytest.mark.parametrize(
    ("event", "path"),
    [
        (
            events_pb2.Event(
                user_id="u",
                track=events_pb2.Track(
                    event="Bought", properties=no_kind({"quantity": 3, "sku": "s"}, "quantity")
                ),
            ),
            "track.properties.quantity",
        ),
        (
            events_pb2.Event(
                user_id="u",
                track=events_pb2.Track(
                    event="Bought",
                    properties=no_kind(
                        {"products": [{"sku": "a"}, {"sku": "b"}]}, "products", 1, "sku"
                    ),
                ),
            ),
            "track.properties.products[1].sku",
        ),
        (
            events_pb2.Event(
                user_id="u",
                identify=events_pb2.Identify(traits=no_kind({"tags": ["a", "b"]}, "tags", 0)),
            ),
            "identify.traits.tags[0]",
        ),
        (
            events_pb2.Event(
                user_id="u",
                identify=events_pb2.Identify(),
                context=no_kind({"user agent": "x"}, "user agent"),
            ),
            'context["user agent"]',
        ),
        (
            events_pb2.Event(
                user_id="u",
                identify=events_pb2.Identify(),
                extra=no_kind({"projectId": "p"}, "projectId"),
            ),
            "extra.projectId",
        ),
    ],
    ids=["property", "nested", "list-item", "odd-key", "extra"],
)
def test_a_value_with_no_kind_is_refused_naming_the_field(
    event: events_pb2.Event, path: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        event_to_spec(event)
    assert caught.value.reason == "invalid_value"
    assert caught.value.message.startswith(f"`{path}` has no value")


def test_common_fields_and_dates_use_spec_keys_and_iso_z() -> None:
    event = events_pb2.Event(
        message_id="m1",
        user_id="u1",
        timestamp=WHEN,
        sent_at=timestamp_pb2.Timestamp(seconds=1_589_068_490),
        received_at=timestamp_pb2.Timestamp(seconds=1_589_068_491, nanos=5_000_000),
        original_timestamp=timestamp_pb2.Timestamp(seconds=0),
        context=struct({"ip": "203.0.113.7", "library": {"name": "inlet-go"}}),
        integrations=struct({"All": False, "Mixpanel": True}),
        channel="server",
        version="1.1",
        track=events_pb2.Track(event="Signed Up"),
    )
    assert event_to_spec(event) == {
        "type": "track",
        "event": "Signed Up",
        "messageId": "m1",
        "userId": "u1",
        "channel": "server",
        "version": "1.1",
        "timestamp": WHEN_TEXT,
        "sentAt": "2020-05-09T23:54:50.000Z",
        "receivedAt": "2020-05-09T23:54:51.005Z",
        "originalTimestamp": "1970-01-01T00:00:00.000Z",
        "context": {"ip": "203.0.113.7", "library": {"name": "inlet-go"}},
        "integrations": {"All": False, "Mixpanel": True},
    }


def test_converted_timestamp_becomes_the_event_time() -> None:
    event = events_pb2.Event(user_id="u", timestamp=WHEN, identify=events_pb2.Identify())
    canonical = canonicalise(orjson.dumps(event_to_spec(event)), received_at_us=RECEIVED_US)
    assert canonical.timestamp_us == WHEN_US


def test_without_a_timestamp_the_receive_time_is_used() -> None:
    event = events_pb2.Event(user_id="u", identify=events_pb2.Identify())
    assert "timestamp" not in event_to_spec(event)
    canonical = canonicalise(orjson.dumps(event_to_spec(event)), received_at_us=RECEIVED_US)
    assert canonical.timestamp_us == RECEIVED_US


def test_unset_fields_are_left_out() -> None:
    spec = event_to_spec(events_pb2.Event(user_id="u", track=events_pb2.Track(event="E")))
    assert spec == {"type": "track", "userId": "u", "event": "E"}


def test_set_but_empty_struct_is_kept_as_an_empty_object() -> None:
    spec = event_to_spec(
        events_pb2.Event(
            user_id="u",
            identify=events_pb2.Identify(traits=struct_pb2.Struct()),
            context=struct_pb2.Struct(),
        )
    )
    assert spec == {"type": "identify", "userId": "u", "traits": {}, "context": {}}


def test_extra_fields_are_merged_at_the_top_level() -> None:
    event = events_pb2.Event(
        user_id="u",
        extra=struct({"projectId": "P0", "_metadata": {"bundled": ["Segment.io"]}}),
        track=events_pb2.Track(event="E"),
    )
    spec = event_to_spec(event)
    assert spec["projectId"] == "P0"
    assert spec["_metadata"] == {"bundled": ["Segment.io"]}
    canonical = canonicalise(orjson.dumps(spec), received_at_us=RECEIVED_US)
    assert canonical.body["projectId"] == "P0"


def test_typed_fields_win_over_extra() -> None:
    event = events_pb2.Event(
        user_id="typed",
        extra=struct({"type": "identify", "userId": "extra", "event": "Extra"}),
        track=events_pb2.Track(event="Typed"),
    )
    spec = event_to_spec(event)
    assert (spec["type"], spec["userId"], spec["event"]) == ("track", "typed", "Typed")


def test_event_without_a_call_has_no_type_and_is_rejected_by_validation() -> None:
    spec = event_to_spec(events_pb2.Event(user_id="u"))
    assert "type" not in spec
    with pytest.raises(InvalidEvent) as caught:
        canonicalise(orjson.dumps(spec), received_at_us=RECEIVED_US)
    assert caught.value.reason == "missing_field"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (events_pb2.Event(user_id="u", track=events_pb2.Track()), "track requires `event`"),
        (events_pb2.Event(user_id="u", group=events_pb2.Group()), "group requires `groupId`"),
        (events_pb2.Event(user_id="u", alias=events_pb2.Alias()), "alias requires `previousId`"),
        (
            events_pb2.Event(anonymous_id="a", delete=events_pb2.Delete()),
            "delete requires `userId`",
        ),
        (
            events_pb2.Event(identify=events_pb2.Identify()),
            "identify requires `userId` or `anonymousId`",
        ),
    ],
)
def test_typed_event_missing_a_required_field_gets_the_webhook_error(
    event: events_pb2.Event, message: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        canonicalise(orjson.dumps(event_to_spec(event)), received_at_us=RECEIVED_US)
    assert caught.value.message == message


@pytest.mark.parametrize(
    "event",
    [
        events_pb2.Event(
            user_id="u",
            identify=events_pb2.Identify(),
            timestamp=timestamp_pb2.Timestamp(seconds=10**12),
        ),
        events_pb2.Event(
            user_id="u",
            identify=events_pb2.Identify(),
            sent_at=timestamp_pb2.Timestamp(seconds=-(10**12)),
        ),
        events_pb2.Event(
            user_id="u", identify=events_pb2.Identify(traits=struct({"score": float("nan")}))
        ),
        events_pb2.Event(
            user_id="u",
            track=events_pb2.Track(event="E", properties=struct({"total": float("inf")})),
        ),
    ],
    ids=["timestamp-year-33658", "sent-at-before-year-1", "nan-trait", "infinite-property"],
)
def test_unrepresentable_typed_values_are_rejected_as_invalid_events(
    event: events_pb2.Event,
) -> None:
    with pytest.raises(InletError):
        canonicalise(orjson.dumps(event_to_spec(event)), received_at_us=RECEIVED_US)
