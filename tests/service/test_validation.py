"""service/validation.py: the webhook contract's rules for one Segment event (docs/design.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InletError, InvalidEvent, UnsupportedType
from service.validation import (
    EVENT_TYPES,
    MAX_MESSAGE_ID_LENGTH,
    CanonicalEvent,
    canonicalise,
    normalise_name,
    parse_json_object,
    spec_fields,
)

RECEIVED_US = 1_700_000_000_123_456
SAMPLES = Path(__file__).resolve().parents[2] / "inlet_tools" / "samples"
SHARED_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "segment-samples"


def event(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def accept(raw: bytes | dict[str, Any], **kwargs: Any) -> CanonicalEvent:
    if isinstance(raw, dict):
        raw = orjson.dumps(raw)
    return canonicalise(raw, received_at_us=RECEIVED_US, **kwargs)


def reject(raw: bytes | dict[str, Any], **kwargs: Any) -> InletError:
    with pytest.raises(InletError) as caught:
        accept(raw, **kwargs)
    return caught.value


def has_type_key(path: Path) -> bool:
    body = json.loads(path.read_bytes())
    return isinstance(body, dict) and ("type" in body or "action" in body)


# ---------------------------------------------------------------------------------------------
# Required fields per call type


MINIMAL_VALID = [
    pytest.param({"type": "identify", "userId": "u1"}, id="identify-userId"),
    pytest.param({"type": "identify", "anonymousId": "a1"}, id="identify-anonymousId"),
    pytest.param({"type": "track", "userId": "u1", "event": "Signed Up"}, id="track"),
    pytest.param({"type": "page", "anonymousId": "a1"}, id="page"),
    pytest.param({"type": "screen", "userId": "u1"}, id="screen"),
    pytest.param({"type": "group", "userId": "u1", "groupId": "g1"}, id="group"),
    pytest.param({"type": "alias", "userId": "u1", "previousId": "p1"}, id="alias"),
    pytest.param({"type": "delete", "userId": "u1"}, id="delete"),
]


@pytest.mark.parametrize("body", MINIMAL_VALID)
def test_minimal_event_of_each_type_is_accepted(body: dict[str, Any]) -> None:
    canonical = accept(body)
    assert canonical.type == body["type"]
    assert canonical.user_id == body.get("userId")
    assert canonical.anonymous_id == body.get("anonymousId")


def test_every_spec_call_type_has_a_minimal_valid_case() -> None:
    covered = {cast(dict[str, Any], param.values[0])["type"] for param in MINIMAL_VALID}
    assert covered == set(EVENT_TYPES)


def test_required_ids_are_exposed_on_the_canonical_event() -> None:
    assert accept({"type": "track", "userId": "u", "event": "Clicked"}).name == "Clicked"
    assert accept({"type": "group", "userId": "u", "groupId": "g"}).group_id == "g"
    assert accept({"type": "alias", "userId": "u", "previousId": "p"}).previous_id == "p"
    assert accept({"type": "page", "userId": "u", "name": "Home"}).name == "Home"


MISSING_FIELD = [
    ({"type": "track", "userId": "u1"}, "track requires `event`"),
    ({"type": "track", "userId": "u1", "event": ""}, "track requires `event`"),
    ({"type": "track", "userId": "u1", "event": None}, "track requires `event`"),
    ({"type": "group", "userId": "u1"}, "group requires `groupId`"),
    ({"type": "group", "userId": "u1", "groupId": ""}, "group requires `groupId`"),
    ({"type": "alias", "userId": "u1"}, "alias requires `previousId`"),
    ({"type": "alias", "anonymousId": "a1", "previousId": "p1"}, "alias requires `userId`"),
    ({"type": "delete", "anonymousId": "a1"}, "delete requires `userId`"),
    ({"type": "delete"}, "delete requires `userId`"),
    ({"type": "identify"}, "identify requires `userId` or `anonymousId`"),
    ({"type": "track", "event": "E"}, "track requires `userId` or `anonymousId`"),
    (
        {"type": "page", "userId": None, "anonymousId": ""},
        "page requires `userId` or `anonymousId`",
    ),
    ({"type": "screen", "name": "Home"}, "screen requires `userId` or `anonymousId`"),
    ({"type": "group", "groupId": "g1"}, "group requires `userId` or `anonymousId`"),
    ({"type": "alias", "previousId": "p1"}, "alias requires `userId` or `anonymousId`"),
]


@pytest.mark.parametrize(("body", "message"), MISSING_FIELD, ids=[m for _, m in MISSING_FIELD])
def test_missing_required_field_is_invalid_with_a_clear_message(
    body: dict[str, Any], message: str
) -> None:
    error = reject(body)
    assert type(error) is InvalidEvent
    assert error.reason == "missing_field"
    assert error.message == message
    assert str(error) == message


# ---------------------------------------------------------------------------------------------
# The `type` value


@pytest.mark.parametrize("spelling", ["Track", "TRACK", "track", "tRaCk", " track "])
def test_type_value_matches_ignoring_case(spelling: str) -> None:
    assert accept({"type": spelling, "userId": "u", "event": "E"}).type == "track"


def test_legacy_action_key_stands_in_for_type() -> None:
    canonical = accept({"action": "Track", "userId": "u", "event": "Order Completed"})
    assert canonical.type == "track"
    assert canonical.name == "Order Completed"


def test_type_wins_over_action_when_both_are_present() -> None:
    assert accept({"type": "identify", "action": "track", "userId": "u"}).type == "identify"


def test_type_key_itself_may_use_another_casing() -> None:
    assert accept({"Type": "identify", "USER_ID": "u"}).type == "identify"


TYPE_ERRORS = [
    ({"userId": "u"}, InvalidEvent, "missing_field"),
    ({"type": None, "userId": "u"}, InvalidEvent, "missing_field"),
    ({"type": 3, "userId": "u"}, InvalidEvent, "wrong_type"),
    ({"type": ["track"], "userId": "u"}, InvalidEvent, "wrong_type"),
    ({"type": "purchase", "userId": "u"}, UnsupportedType, "unknown_type"),
    ({"type": "batch", "userId": "u"}, UnsupportedType, "unknown_type"),
    ({"action": "purchase", "userId": "u"}, UnsupportedType, "unknown_type"),
]


@pytest.mark.parametrize(("body", "error_class", "reason"), TYPE_ERRORS)
def test_bad_or_missing_type(body: dict[str, Any], error_class: type, reason: str) -> None:
    error = reject(body)
    assert type(error) is error_class
    assert error.reason == reason


def test_missing_type_message_names_the_field() -> None:
    assert reject({"userId": "u"}).message == "the event has no `type`"


def test_unknown_type_message_lists_the_supported_types() -> None:
    error = reject({"type": "purchase", "userId": "u"})
    assert "'purchase'" in error.message
    for event_type in EVENT_TYPES:
        assert event_type in error.message


def test_very_long_unknown_type_is_truncated_in_the_message() -> None:
    error = reject({"type": "x" * 5000, "userId": "u"})
    assert type(error) is UnsupportedType
    assert len(error.message) < 300


@pytest.mark.parametrize(
    ("body", "supported"),
    [
        ({"type": "identify", "userId": "u"}, ("track",)),
        ({"type": "delete", "userId": "u"}, ("identify", "track", "page", "screen")),
        ({"type": "GROUP", "userId": "u", "groupId": "g"}, ("track",)),
    ],
)
def test_type_outside_supported_types_is_not_supported(
    body: dict[str, Any], supported: tuple[str, ...]
) -> None:
    error = reject(body, supported_types=supported)
    assert type(error) is UnsupportedType
    assert error.reason == "type_not_supported"


def test_type_inside_supported_types_is_accepted() -> None:
    body = {"type": "Track", "userId": "u", "event": "E"}
    assert accept(body, supported_types=("track",)).type == "track"


# ---------------------------------------------------------------------------------------------
# Field-name casing


@pytest.mark.parametrize("key", ["userId", "user_id", "UserID", "User ID", "USERID", "user-id"])
def test_user_id_key_matches_ignoring_case_and_separators(key: str) -> None:
    assert accept({"type": "identify", key: "u-42"}).user_id == "u-42"


@pytest.mark.parametrize(
    ("body", "attribute", "expected"),
    [
        ({"type": "identify", "anonymous_id": "a"}, "anonymous_id", "a"),
        ({"type": "identify", "Anonymous ID": "a"}, "anonymous_id", "a"),
        ({"type": "track", "userId": "u", "EVENT": "E"}, "name", "E"),
        ({"type": "group", "userId": "u", "group_id": "g"}, "group_id", "g"),
        ({"type": "alias", "User ID": "u", "Previous ID": "p"}, "previous_id", "p"),
        ({"type": "identify", "userId": "u", "message_id": "m"}, "message_id", "m"),
        ({"type": "page", "userId": "u", "Name": "Home"}, "name", "Home"),
    ],
)
def test_spec_field_keys_match_in_any_casing(
    body: dict[str, Any], attribute: str, expected: str
) -> None:
    assert getattr(accept(body), attribute) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "look-alike", "userId": "exact", "type": "identify"},
        {"userId": "exact", "user_id": "look-alike", "type": "identify"},
        {"USERID": "look-alike", "userId": "exact", "User ID": "other", "type": "identify"},
    ],
    ids=["look-alike-first", "exact-first", "two-look-alikes"],
)
def test_exact_camel_case_key_wins_over_a_look_alike(body: dict[str, Any]) -> None:
    assert accept(body).user_id == "exact"


def test_first_look_alike_is_used_without_an_exact_key() -> None:
    assert accept({"type": "identify", "user_id": "first", "UserID": "second"}).user_id == "first"


def test_spec_fields_maps_look_alikes_to_spec_names() -> None:
    found = spec_fields({"User ID": "u", "EVENT": "e", "custom": 1, "previous-id": "p"})
    assert found == {"userId": "u", "event": "e", "previousId": "p"}


@pytest.mark.parametrize(
    ("name", "normal"),
    [("userId", "userid"), ("User ID", "userid"), ("user_id", "userid"), ("USER-ID", "userid")],
)
def test_normalise_name(name: str, normal: str) -> None:
    assert normalise_name(name) == normal


# ---------------------------------------------------------------------------------------------
# Identifier values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "1"),
        (1.0, "1"),
        (0, "0"),
        (-7, "-7"),
        (12345678901234, "12345678901234"),
        (2**63 - 1, "9223372036854775807"),
        ("abc", "abc"),
    ],
)
def test_numeric_ids_become_strings(value: Any, expected: str) -> None:
    body = {
        "type": "alias",
        "userId": value,
        "previousId": value,
        "anonymousId": value,
        "messageId": value,
    }
    canonical = accept(body)
    assert canonical.user_id == expected
    assert canonical.previous_id == expected
    assert canonical.anonymous_id == expected
    assert canonical.message_id == expected


def test_numeric_group_id_becomes_a_string() -> None:
    assert accept({"type": "group", "userId": 5, "groupId": 42}).group_id == "42"


@pytest.mark.parametrize("absent", [None, ""])
def test_null_and_empty_ids_count_as_absent(absent: Any) -> None:
    canonical = accept({"type": "identify", "userId": absent, "anonymousId": "a"})
    assert canonical.user_id is None
    assert canonical.anonymous_id == "a"


@pytest.mark.parametrize("absent", [None, ""])
def test_null_or_empty_message_id_gets_a_generated_one(absent: Any) -> None:
    assert accept({"type": "identify", "userId": "u", "messageId": absent}).message_id.startswith(
        "inlet-sha256-"
    )


# ---------------------------------------------------------------------------------------------
# Field types


WRONG_TYPES = [
    ({"type": "identify", "userId": "u", "traits": ["a"]}, "traits"),
    ({"type": "identify", "userId": "u", "traits": "x"}, "traits"),
    ({"type": "track", "userId": "u", "event": "E", "properties": 3}, "properties"),
    ({"type": "track", "userId": "u", "event": "E", "context": "ctx"}, "context"),
    ({"type": "track", "userId": "u", "event": "E", "integrations": [True]}, "integrations"),
    ({"type": "track", "userId": "u", "event": 42}, "event"),
    ({"type": "track", "userId": "u", "event": ["E"]}, "event"),
    ({"type": "track", "userId": "u", "event": True}, "event"),
    ({"type": "page", "userId": "u", "name": 1}, "name"),
    ({"type": "page", "userId": "u", "category": {"a": 1}}, "category"),
    ({"type": "identify", "userId": "u", "timestamp": {"at": "now"}}, "timestamp"),
    ({"type": "identify", "userId": "u", "timestamp": ["2020-01-01"]}, "timestamp"),
    ({"type": "identify", "userId": "u", "timestamp": True}, "timestamp"),
    ({"type": "identify", "userId": "u", "sentAt": {}}, "sentAt"),
    ({"type": "identify", "userId": {"id": 1}}, "userId"),
    ({"type": "identify", "userId": True}, "userId"),
    ({"type": "identify", "anonymousId": ["a"]}, "anonymousId"),
    ({"type": "identify", "userId": "u", "messageId": {"id": 1}}, "messageId"),
    ({"type": "group", "userId": "u", "groupId": ["g"]}, "groupId"),
    ({"type": "alias", "userId": "u", "previousId": False}, "previousId"),
]


@pytest.mark.parametrize(("body", "field"), WRONG_TYPES)
def test_wrong_field_type_is_invalid(body: dict[str, Any], field: str) -> None:
    error = reject(body)
    assert type(error) is InvalidEvent
    assert error.reason == "wrong_type"
    assert error.message.startswith(f"`{field}` must be ")


def test_wrong_type_message_names_expected_and_actual_kind() -> None:
    error = reject({"type": "identify", "userId": "u", "traits": [1]})
    assert error.message == "`traits` must be an object, not an array"


def test_wrong_type_is_reported_for_a_look_alike_key_too() -> None:
    error = reject({"type": "identify", "userId": "u", "Traits": 5})
    assert error.reason == "wrong_type"


@pytest.mark.parametrize("field", ["traits", "properties", "context", "integrations"])
def test_null_object_fields_are_accepted(field: str) -> None:
    assert accept({"type": "identify", "userId": "u", field: None}).body[field] is None


# ---------------------------------------------------------------------------------------------
# The body, the messageId


def test_unknown_top_level_fields_are_kept_as_sent() -> None:
    body = {
        "type": "track",
        "userId": "u",
        "event": "E",
        "writeKey": "w",
        "_metadata": {"x": [1]},
        "Custom Field": None,
        "properties": {"User ID": "kept"},
    }
    canonical = accept(body)
    assert canonical.body == body
    assert canonical.raw == orjson.dumps(body)


def test_raw_bytes_are_stored_exactly_as_received() -> None:
    raw = b'{ "type" : "identify",\n  "userId": "u", "traits": {"b": 2, "a": 1} }'
    assert accept(raw).raw == raw


def test_message_id_is_kept() -> None:
    assert accept({"type": "identify", "userId": "u", "messageId": "m-1"}).message_id == "m-1"


def test_missing_message_id_is_derived_from_the_bytes() -> None:
    raw = b'{"type": "identify", "userId": "u"}'
    first = accept(raw).message_id
    assert first.startswith("inlet-sha256-")
    assert len(first) == len("inlet-sha256-") + 40
    assert all(c in "0123456789abcdef" for c in first.removeprefix("inlet-sha256-"))
    assert accept(raw).message_id == first  # a redelivery dedupes
    assert accept(raw, settings=b'{"a":1}').message_id == first


@pytest.mark.parametrize(
    "other",
    [
        b'{"type": "identify", "userId": "v"}',
        b'{"type": "identify",  "userId": "u"}',
        b'{"userId": "u", "type": "identify"}',
    ],
)
def test_different_bytes_get_a_different_message_id(other: bytes) -> None:
    assert accept(other).message_id != accept(b'{"type": "identify", "userId": "u"}').message_id


def test_message_id_up_to_the_limit_is_accepted() -> None:
    message_id = "m" * MAX_MESSAGE_ID_LENGTH
    assert accept({"type": "identify", "userId": "u", "messageId": message_id}).message_id == (
        message_id
    )


def test_message_id_over_the_limit_is_rejected() -> None:
    assert MAX_MESSAGE_ID_LENGTH == 256
    error = reject({"type": "identify", "userId": "u", "messageId": "m" * 257})
    assert type(error) is InvalidEvent
    assert error.reason == "field_too_long"
    assert "256" in error.message


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    "settings",
    [b"not json", b"{", b"[1, 2]", b'"text"', b"42", b"null", b"  ", b"\xff\xfe"],
)
def test_bad_settings_are_invalid_settings(settings: bytes) -> None:
    error = reject({"type": "identify", "userId": "u"}, settings=settings)
    assert type(error) is InvalidEvent
    assert error.reason == "invalid_settings"
    assert "X-Segment-Settings" in error.message


def test_settings_object_is_kept() -> None:
    settings = b'{"apiKey": "k", "region": "eu"}'
    assert accept({"type": "identify", "userId": "u"}, settings=settings).settings == settings


@pytest.mark.parametrize("settings", [None, b""])
def test_no_settings_is_stored_as_none(settings: bytes | None) -> None:
    assert accept({"type": "identify", "userId": "u"}, settings=settings).settings is None


# ---------------------------------------------------------------------------------------------
# The body as JSON


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "invalid_json"),
        (b"   \n\t", "invalid_json"),
        (b"{", "invalid_json"),
        (b"{'type': 'track'}", "invalid_json"),
        (b'{"type": "identify", "userId": "u",}', "invalid_json"),
        (b'{"type": "identify", "userId": "\xff"}', "invalid_json"),
        (b"[" * 5000 + b"]" * 5000, "invalid_json"),
        (b'[{"type": "identify", "userId": "u"}]', "not_an_object"),
        (b"[]", "not_an_object"),
        (b'"identify"', "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (b"true", "not_an_object"),
    ],
)
def test_body_that_is_not_one_json_object_is_invalid(raw: bytes, reason: str) -> None:
    error = reject(raw)
    assert type(error) is InvalidEvent
    assert error.reason == reason


def test_empty_body_message_says_it_is_empty() -> None:
    assert "empty" in reject(b"").message


def test_array_body_message_names_what_was_sent() -> None:
    assert reject(b"[]").message == "the event must be a JSON object, not an array"


def test_parse_json_object_returns_the_object() -> None:
    assert parse_json_object(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


def test_parse_json_object_uses_the_given_reason_and_name() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_json_object(b"[]", "the thing", "bad_thing")
    assert caught.value.reason == "bad_thing"
    assert caught.value.message.startswith("the thing ")


# ---------------------------------------------------------------------------------------------
# Timestamps


@pytest.mark.parametrize(
    ("timestamp", "expected_us"),
    [
        ("2020-05-09T23:54:49.209Z", 1_589_068_489_209_000),
        ("2020-05-10T01:54:49.209+02:00", 1_589_068_489_209_000),
        ("2015-2-02T00:30:08.276Z", 1_422_837_008_276_000),
        (1_589_068_489, 1_589_068_489_000_000),
        (1_589_068_489_209, 1_589_068_489_209_000),
    ],
)
def test_timestamp_is_parsed(timestamp: Any, expected_us: int) -> None:
    canonical = accept({"type": "identify", "userId": "u", "timestamp": timestamp})
    assert canonical.timestamp_us == expected_us
    assert canonical.received_at_us == RECEIVED_US


@pytest.mark.parametrize(
    "body",
    [
        {"type": "identify", "userId": "u"},
        {"type": "identify", "userId": "u", "timestamp": None},
        {"type": "identify", "userId": "u", "timestamp": ""},
        {"type": "identify", "userId": "u", "timestamp": "yesterday"},
        {"type": "identify", "userId": "u", "timestamp": "2020-13-45T99:00:00Z"},
        {"type": "identify", "userId": "u", "timestamp": 1e300},
    ],
    ids=["absent", "null", "empty", "words", "impossible-date", "huge-number"],
)
def test_absent_or_unparsable_timestamp_falls_back_to_receive_time(body: dict[str, Any]) -> None:
    canonical = accept(body)
    assert canonical.timestamp_us == RECEIVED_US
    assert canonical.body == body  # the original value stays in the JSON


def test_other_dates_do_not_replace_the_timestamp() -> None:
    body = {
        "type": "identify",
        "userId": "u",
        "sentAt": "2020-01-01T00:00:00Z",
        "originalTimestamp": "2020-01-01T00:00:00Z",
    }
    assert accept(body).timestamp_us == RECEIVED_US


def test_timestamp_key_in_another_casing_is_used() -> None:
    canonical = accept({"type": "identify", "userId": "u", "TimeStamp": "2020-05-09T23:54:49Z"})
    assert canonical.timestamp_us == 1_589_068_489_000_000


@pytest.mark.parametrize("timestamp", ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z", 0])
def test_timestamp_at_the_epoch_is_kept_not_replaced(timestamp: Any) -> None:
    canonical = accept({"type": "identify", "userId": "u", "timestamp": timestamp})
    assert canonical.timestamp_us == 0


# ---------------------------------------------------------------------------------------------
# Real payloads


SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))


def test_sample_folder_is_populated() -> None:
    assert len(SAMPLE_FILES) >= 10
    assert all(has_type_key(path) for path in SAMPLE_FILES)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[path.name for path in SAMPLE_FILES])
def test_real_segment_sample_is_accepted(path: Path) -> None:
    raw = path.read_bytes()
    body = json.loads(raw)
    canonical = accept(raw)
    declared = body.get("type") or body.get("action")
    assert canonical.type == declared.lower()
    assert canonical.body == body
    assert canonical.raw == raw
    if isinstance(body.get("messageId"), str):
        assert canonical.message_id == body["messageId"]


def test_sample_with_unusual_casing_reads_the_ids() -> None:
    canonical = accept((SAMPLES / "alias_webhook_unusual_casing.json").read_bytes())
    assert (canonical.type, canonical.user_id, canonical.previous_id) == (
        "alias",
        "userId",
        "previousId",
    )
    assert canonical.timestamp_us == 1_354_408_208_276_000  # 2012-12-02T00:30:08.276Z


def test_delete_sample_keeps_its_go_formatted_original_timestamp() -> None:
    raw = (SAMPLES / "delete_partner_spec.json").read_bytes()
    canonical = accept(raw)
    assert (canonical.type, canonical.user_id) == ("delete", "507f191e81")
    assert canonical.timestamp_us == 1_589_068_489_209_000  # 2020-05-09T23:54:49.209Z
    assert canonical.body["originalTimestamp"].endswith("+0000 UTC m=+70366.298768264")


@pytest.mark.skipif(not SHARED_SAMPLES.is_dir(), reason=f"{SHARED_SAMPLES} is not on this machine")
def test_samples_match_the_shared_reference_folder() -> None:
    """inlet_tools/samples/ is a byte-for-byte copy of the shared samples that have a type."""
    expected = {p.name: p.read_bytes() for p in SHARED_SAMPLES.glob("*.json") if has_type_key(p)}
    assert {p.name: p.read_bytes() for p in SAMPLE_FILES} == expected


# ---------------------------------------------------------------------------------------------
# Property: only expected failures


_SPEC_KEYS = [
    "type",
    "action",
    "userId",
    "user_id",
    "User ID",
    "anonymousId",
    "messageId",
    "event",
    "groupId",
    "previousId",
    "timestamp",
    "sentAt",
    "traits",
    "properties",
    "context",
    "name",
    "category",
    "Type",
    "TIMESTAMP",
]
_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
    | st.sampled_from(
        list(EVENT_TYPES)
        + [
            "TRACK",
            "Group",
            "2020-01-01T00:00:00Z",
            "2015-2-02T00:30:08.276Z",
            "9999-12-31T23:59:59-23:59",
        ]
    )
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_JSON_OBJECTS = st.dictionaries(
    st.sampled_from(_SPEC_KEYS) | st.text(max_size=12), _JSON_VALUES, max_size=10
)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(body=_JSON_OBJECTS)
def test_any_json_object_is_accepted_or_rejected_with_an_inlet_error(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    try:
        canonical = canonicalise(raw, received_at_us=RECEIVED_US)
    except InletError as error:
        assert isinstance(error, InvalidEvent | UnsupportedType)
        assert error.reason
        assert error.message
    else:
        assert canonical.type in EVENT_TYPES
        assert canonical.raw == raw
        assert canonical.body == orjson.loads(raw)
        assert canonical.message_id
        assert canonical.user_id is not None or canonical.anonymous_id is not None
