"""Conversion between the typed `inlet.v1.Event` message and Segment's JSON shape.

Internal callers may send typed events; they are turned into the Spec's JSON form
and then validated exactly like webhook traffic (validation.py), so there is one
set of rules.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

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
_COMMON_IDS = {"message_id": "messageId", "user_id": "userId", "anonymous_id": "anonymousId",
               "channel": "channel", "version": "version"}  # fmt: skip
_COMMON_DATES = {"timestamp": "timestamp", "sent_at": "sentAt", "received_at": "receivedAt",
                 "original_timestamp": "originalTimestamp"}  # fmt: skip


def _struct(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


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
        InvalidEvent: a value JSON cannot carry (NaN or infinite numbers in a Struct)
            or a Timestamp outside years 1-9999.
    """
    try:
        return _event_to_spec(event)
    except ValueError as exc:  # protobuf's own checks; its messages name the bad value
        raise InvalidEvent(f"the typed event cannot be converted: {exc}", "wrong_type") from None


def _event_to_spec(event: events_pb2.Event) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if event.HasField("extra"):
        spec.update(_struct(event.extra))
    call = event.WhichOneof("call")
    if call is not None:
        spec_type, fields = _CALL_FIELDS[call]
        spec["type"] = spec_type
        body = getattr(event, call)
        for proto_field, key in fields.items():
            value = getattr(body, proto_field)
            if isinstance(value, struct_pb2.Struct):
                if body.HasField(proto_field):
                    spec[key] = _struct(value)
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
            spec[name] = _struct(getattr(event, name))
    return spec
