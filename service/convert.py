"""Conversion between the typed `inlet.v1.Event` message and Segment's JSON shape.

Internal callers may send typed events; they are turned into the Spec's JSON form
and then validated exactly like webhook traffic (validation.py), so there is one
set of rules.

A Struct's numbers are doubles: one that is a whole number within ±2^53 (where every
integer is exact) becomes a JSON integer, so `3` is stored as `3`, the same text the
JSON form of the event stores, not `3.0`. A Value with no kind set (what a client that
misspells `number_value` sends) is refused, naming the field, rather than stored as null.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson
from google.protobuf import struct_pb2, timestamp_pb2

from inlet.v1 import events_pb2
from service.errors import InvalidEvent
from service.timestamps import MAX_MICROS, MIN_MICROS, format_micros

_CALL_FIELDS = {
    # oneof field -> (Spec type, {proto field: Spec key})
    "identify": ("identify", {"traits": "traits"}),
    "track": ("track", {"event": "event", "properties": "properties"}),
    "page": ("page", {"name": "name", "category": "category", "properties": "properties"}),
    "screen": ("screen", {"name": "name", "category": "category", "properties": "properties"}),
    "group": ("group", {"group_id": "groupId", "traits": "traits"}),
    "alias": ("alias", {"previous_id": "previousId"}),
    "delete": ("delete", {}),
}
#: Up to here every integer is a double: beyond, a whole double may stand for another one.
_MAX_EXACT_INTEGER: Final = 2**53
_COMMON_IDS = {
    "message_id": "messageId",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "channel": "channel",
    "version": "version",
}
_COMMON_DATES = {
    "timestamp": "timestamp",
    "sent_at": "sentAt",
    "received_at": "receivedAt",
    "original_timestamp": "originalTimestamp",
}


class _BadValue(Exception):
    """A Value JSON cannot carry; `path` is filled in on the way out, innermost first."""

    def __init__(self, problem: str, reason: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.reason = reason
        self.path: list[str] = []


def _object(struct: struct_pb2.Struct, name: str) -> dict[str, Any]:
    """`struct` as a JSON object; errors name the field (`track.properties.items[0].sku`)."""
    try:
        return _struct(struct)
    except _BadValue as bad:
        path = name + "".join(reversed(bad.path))
        raise InvalidEvent(f"`{path[:300]}` {bad.problem}", bad.reason) from None


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    members = {}
    for key, value in struct.fields.items():
        try:
            members[key] = _value(value)
        except _BadValue as bad:
            bad.path.append(f".{key}" if key.isidentifier() else f"[{orjson.dumps(key).decode()}]")
            raise
    return members


def _value(value: struct_pb2.Value) -> Any:
    # Not json_format.MessageToDict: it turns a Value with no kind into null, and 3 into 3.0.
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        items = []
        for n, item in enumerate(value.list_value.values):
            try:
                items.append(_value(item))
            except _BadValue as bad:
                bad.path.append(f"[{n}]")
                raise
        return items
    if kind == "null_value":
        return None
    raise _BadValue(
        "has no value: a google.protobuf.Value needs one of null_value, number_value, "
        "string_value, bool_value, struct_value or list_value set",
        "invalid_value",
    )


def _number(number: float) -> int | float:
    if not math.isfinite(number):
        raise _BadValue(f"is {number}, which JSON cannot carry", "wrong_type")
    if number.is_integer() and abs(number) <= _MAX_EXACT_INTEGER:
        # -0.0 stays a float: as an integer it would lose its sign.
        return int(number) if number or math.copysign(1.0, number) > 0 else number
    return number


def _date(value: timestamp_pb2.Timestamp) -> str:
    return format_micros(value.ToMicroseconds())


def timestamp_micros(stamp: timestamp_pb2.Timestamp, field: str, reason: str = "wrong_type") -> int:
    """A Timestamp from a caller as µs since the epoch; InvalidEvent naming `field` if it is
    not a valid date of years 1-9999.

    Not Timestamp.ToMicroseconds(): that is Python code with checks, on the hot path.
    """
    micros = stamp.seconds * 1_000_000 + stamp.nanos // 1000
    if not (0 <= stamp.nanos < 1_000_000_000 and MIN_MICROS <= micros <= MAX_MICROS):
        raise InvalidEvent(f"`{field}` is not a valid date of years 1-9999", reason)
    return micros


def event_to_spec(event: events_pb2.Event) -> dict[str, Any]:
    """The Segment Spec JSON object for a typed event (unset fields left out).

    A typed event without a call (`oneof call` unset) gets no `type`, which
    validation then rejects with a clear message.

    Raises:
        InvalidEvent: a Struct value JSON cannot carry, naming the field (`wrong_type`:
            NaN or infinite; `invalid_value`: a Value with no kind set), or a Timestamp
            outside years 1-9999.
    """
    try:
        return _event_to_spec(event)
    except ValueError as exc:  # protobuf's own checks (dates); its messages name the value
        raise InvalidEvent(f"the typed event cannot be converted: {exc}", "wrong_type") from None


def _event_to_spec(event: events_pb2.Event) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if event.HasField("extra"):
        spec.update(_object(event.extra, "extra"))
    call = event.WhichOneof("call")
    if call is not None:
        spec_type, fields = _CALL_FIELDS[call]
        spec["type"] = spec_type
        body = getattr(event, call)
        for proto_field, key in fields.items():
            value = getattr(body, proto_field)
            if isinstance(value, struct_pb2.Struct):
                if body.HasField(proto_field):
                    spec[key] = _object(value, f"{call}.{proto_field}")
            elif value:
                spec[key] = value
    for proto_field, key in _COMMON_IDS.items():
        if value := getattr(event, proto_field):
            spec[key] = value
    for proto_field, key in _COMMON_DATES.items():
        if event.HasField(proto_field):  # type: ignore[arg-type]  # names from the table
            spec[key] = _date(getattr(event, proto_field))
    for name in ("context", "integrations"):
        if event.HasField(name):
            spec[name] = _object(getattr(event, name), name)
    return spec
