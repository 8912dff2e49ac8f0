"""The SDK routes' events as their senders wrote them: pure functions on JSON text.

The bridge stores each event of an SDK request as JSON for the core. Writing the parsed
event again is fast, and exact for nearly every event; but a parser reads numbers into
ints and doubles, so `-0` would come back as `0`, `1.50` as `1.5`, `1E+20` as `1e20`
and an integer beyond 64 bits as a float without its last digits, and orjson writes
at most 254 levels of nesting. The webhook stores the body it received; the SDK routes
must merge batch-level fields into each event, so for a body with such a number (or
such nesting) the event is cut out of the body's text and the merge is done on text
(`with_batch_defaults`, the same rules as sdk.with_batch_defaults on parsed values).
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from service.json_text import array_items, object_members

#: How deep batch-level and event-level objects are merged (here and in sdk.py); below
#: it the event's value wins whole. Bounds the recursion whatever nesting a hostile body has.
MERGE_DEPTH: Final = 8

# Everything up to the next number (strings skipped whole: their digits are text), then
# the number, if there is one more. Anchored at the previous match's end, so the scan
# never starts inside a string.
_NEXT_NUMBER: Final = re.compile(r'(?:[^"\d-]++|"(?:[^"\\]++|\\.)*+")*+(-?[\d.eE+-]++)?')


def numbers_round_trip(text: str) -> bool:
    """Whether every number in the JSON `text` is written as orjson writes it back
    after parsing it (most are: `12`, `12.5`, `0.1`)."""
    position = 0
    while True:
        found = _NEXT_NUMBER.match(text, position)
        if found is None or found.group(1) is None:  # (it always matches: at least "")
            return True
        number = found.group(1)
        if orjson.dumps(orjson.loads(number)).decode() != number:
            return False
        position = found.end()


def event_texts(text: str, single: bool) -> list[str]:
    """The JSON text of each event of a request body `text`: the body itself for a
    single-event route, else each item of its `batch` (the last one written, as the
    parser keeps; sdk.events_from checked it is an array)."""
    if single:
        return [text]
    start = [s for key, s, _ in object_members(text) if key == "batch"][-1]
    return [text[a:b] for a, b in array_items(text, start)]


def batch_defaults(text: str, body: dict[str, Any], single: bool) -> dict[str, str]:
    """The batch-level members that go into each event, as written: a non-empty
    `context` or `integrations` object, a `sentAt` (`body` is `text` parsed); none on a
    single-event route, whose body is the event."""
    if single:
        return {}
    written = {key: text[s:e] for key, s, e in object_members(text)}  # the last one wins
    defaults = {
        f: written[f]
        for f in ("context", "integrations")
        if isinstance(body.get(f), dict) and body[f]
    }
    if body.get("sentAt") is not None:
        defaults["sentAt"] = written["sentAt"]
    return defaults


def with_batch_defaults(event_text: str, defaults: dict[str, str], type: str | None) -> str:
    """The event (an object's text) as stored: sdk.with_batch_defaults on text, its own
    members as written, the route's `type` on a single-event route. A member written
    twice is kept once, with the value a parser keeps (the last) at the place of the
    first, as a parser would."""
    members = {key: event_text[s:e] for key, s, e in object_members(event_text)}
    members.pop("writeKey", None)
    if type is not None:
        members["type"] = orjson.dumps(type).decode()
    for field in ("context", "integrations"):
        shared = defaults.get(field)
        own = members.get(field)
        if shared is None:
            continue
        if own is None or own == "null":
            members[field] = shared
        elif own.startswith("{"):
            members[field] = merged_objects(shared, own)
    if "sentAt" in defaults and members.get("sentAt", "null") == "null":
        members["sentAt"] = defaults["sentAt"]
    return _object(members)


def merged_objects(base: str, over: str, depth: int = 0) -> str:
    """sdk.deep_merge on the texts of two objects: `over` wins on conflicts, objects
    merged member by member down to MERGE_DEPTH levels."""
    merged = {key: base[s:e] for key, s, e in object_members(base)}
    for key, s, e in object_members(over):
        value, inner = over[s:e], merged.get(key)
        if depth < MERGE_DEPTH and value.startswith("{") and inner and inner.startswith("{"):
            merged[key] = merged_objects(inner, value, depth + 1)
        else:
            merged[key] = value
    return _object(merged)


def _object(members: dict[str, str]) -> str:
    return "{" + ",".join(f"{orjson.dumps(k).decode()}:{v}" for k, v in members.items()) + "}"
