"""Property-based fuzzing of the core's gRPC surface: EventService.Ingest and IngestBatch.

Against the session's live core (a real grpc.aio server and SQLite store), over a
plain synchronous channel. Every example checks:

* the RPC status is one the contract allows (OK, INVALID_ARGUMENT, UNAUTHENTICATED,
  PERMISSION_DENIED, UNIMPLEMENTED, UNAVAILABLE, RESOURCE_EXHAUSTED) — never INTERNAL
  or UNKNOWN, which mean a bug (the bridge answers them with HTTP 500);
* a refusal carries a google.rpc.ErrorInfo with a stable `reason`;
* IngestBatch answers one result per item, none with code 13 (INTERNAL) or 2 (UNKNOWN);
* OK means stored: a stored JSON item's payload is the exact bytes sent;
* afterwards a valid event still ingests.

A request the server cannot *decode* (invalid UTF-8 in a proto3 `string` field,
corrupt wire bytes, messages nested beyond protobuf's decoder depth limit) never
reaches the servicer; without service/interceptors.py grpc answered UNKNOWN with the
exception text. It must be INVALID_ARGUMENT, like any other bad request.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc
import orjson
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st

from inlet.v1 import events_pb2, events_pb2_grpc
from tests.fuzzing import FUZZ
from tests.stack import LiveStack

ALLOWED: Final = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
BUG_CODES: Final = frozenset({grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]})
TIMEOUT_S: Final = 10.0
INGEST: Final = "/inlet.v1.EventService/Ingest"
INGEST_BATCH: Final = "/inlet.v1.EventService/IngestBatch"


_ids = itertools.count()


def fresh_id(tag: str) -> str:
    """A messageId unused in this session (fixed width: draws must not depend on it)."""
    return f"fuzz-grpc-{tag}-{next(_ids):08d}"


# -- calling the core ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(live: LiveStack) -> Iterator[grpc.Channel]:
    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    with grpc.insecure_channel(live.stack.core_target, options=options) as channel:
        yield channel


Metadata = list[tuple[str, str]]


def bearer(key: str) -> Metadata:
    return [("authorization", f"Bearer {key}")]


class Outcome:
    """An RPC's status, reply (when OK) and ErrorInfo reason (when not)."""

    def __init__(self, code: grpc.StatusCode, reply: Any, details: str, reason: str | None):
        self.code, self.reply, self.details, self.reason = code, reply, details, reason

    def __repr__(self) -> str:
        return f"Outcome({self.code.name}, {self.details!r}, reason={self.reason!r})"


def call(
    method: Callable[..., Any],
    request: Any,
    metadata: Metadata | None = None,
    *,
    tally: bool = True,
) -> Outcome:
    try:
        reply = method(request, metadata=metadata or [], timeout=TIMEOUT_S)
    except grpc.RpcError as error:
        code = error.code()
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, (
            f"no answer within {TIMEOUT_S} s: the core hangs"
        )
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        reason = None
        if status is not None and status.details:
            info = error_details_pb2.ErrorInfo()
            if status.details[0].Unpack(info):
                reason = info.reason
        outcome = Outcome(code, None, error.details() or "", reason)
    else:
        outcome = Outcome(grpc.StatusCode.OK, reply, "", None)
    if tally and currently_in_test_context():
        event(f"status {outcome.code.name}")  # for --hypothesis-show-statistics
    return outcome


def decodes(message_type: Any, wire: bytes) -> bool:
    """Whether protobuf (the same library as the core's) can decode `wire`."""
    try:
        message_type.FromString(wire)
    except Exception:  # noqa: BLE001 - DecodeError and friends
        return False
    return True


def check_status(outcome: Outcome) -> None:
    """The status is allowed; a refusal says why."""
    assert outcome.code in ALLOWED, outcome
    if outcome.code != grpc.StatusCode.OK:
        assert outcome.details and outcome.reason, outcome


def check_result(result: events_pb2.IngestResult) -> None:
    assert result.code not in BUG_CODES, result
    if result.outcome == events_pb2.OUTCOME_REJECTED:
        assert result.code != 0 and result.reason and result.message, result
        assert grpc_code(result.code) in ALLOWED - {grpc.StatusCode.OK}, result
    elif result.outcome == events_pb2.OUTCOME_SUPPRESSED:
        # An event of a user an earlier delete in the run covers: accepted, not stored.
        assert result.code == 0 and result.reason == "user_deleted" and result.message_id, result
        assert result.sequence == 0, result
    else:
        assert result.outcome in (events_pb2.OUTCOME_STORED, events_pb2.OUTCOME_DUPLICATE)
        assert result.code == 0 and result.message_id, result
        assert (result.sequence > 0) == (result.outcome == events_pb2.OUTCOME_STORED), result


def grpc_code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


def stub(channel: grpc.Channel) -> events_pb2_grpc.EventServiceStub:
    return events_pb2_grpc.EventServiceStub(channel)


def raw_method(channel: grpc.Channel, path: str, reply_type: Any) -> Callable[..., Any]:
    """A method that sends its request bytes exactly as given."""
    return channel.unary_unary(
        path, request_serializer=lambda b: b, response_deserializer=reply_type.FromString
    )


def stored_payload(live: LiveStack, message_id: str) -> bytes | None:
    account = live.stack.account_ids["acme"]
    return live.run(live.stack.store.get_event_payload(account, message_id))


def valid_json(message_id: str) -> bytes:
    event = {"type": "track", "userId": "u-fuzz", "event": "Fuzzed", "messageId": message_id}
    return orjson.dumps(event)


def still_works(live: LiveStack, channel: grpc.Channel) -> None:
    """After any example, a valid event is still stored."""
    message_id = fresh_id("canary")
    item = events_pb2.IngestItem(json=valid_json(message_id))
    outcome = call(stub(channel).Ingest, item, bearer(live.stack.keys["ingest"]), tally=False)
    assert outcome.code == grpc.StatusCode.OK, outcome
    assert outcome.reply.outcome == events_pb2.OUTCOME_STORED, outcome.reply
    assert stored_payload(live, message_id) == item.json


# -- strategies ----------------------------------------------------------------------------

#: Metadata values gRPC itself accepts (printable ASCII; others fail in the client).
ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


def json_values(finite: bool = True) -> st.SearchStrategy[Any]:
    floats = st.floats(allow_nan=not finite, allow_infinity=not finite)
    scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | floats | st.text()
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
        max_leaves=15,
    )


JSON_OBJECTS = st.dictionaries(st.text(max_size=10), json_values(), max_size=6)
TYPES: Final = ["identify", "track", "page", "screen", "group", "alias", "delete"]


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """Spec-shaped JSON: real and unknown types, Spec fields with mostly right types."""
    text = st.text(min_size=1, max_size=10)
    right = {
        "userId": text | st.integers(-(2**63), 2**63 - 1),
        "anonymousId": text,
        "groupId": text,
        "previousId": text,
        "messageId": st.text(min_size=1, max_size=300),
        "event": text,
        "name": text,
        "traits": JSON_OBJECTS,
        "properties": JSON_OBJECTS,
        "timestamp": text | st.floats(allow_nan=False, allow_infinity=False),
    }
    kind = draw(
        st.one_of(
            st.sampled_from(TYPES),
            st.sampled_from(TYPES).map(str.title),
            st.sampled_from(["batch", "Track Event", ""]),
            json_values(),
        )
    )
    body: dict[str, Any] = {"type": kind}
    for field in draw(st.lists(st.sampled_from(sorted(right)), max_size=5, unique=True)):
        body[field] = draw(st.one_of(right[field], right[field], right[field], json_values()))
    return body


def valid_event_with(properties: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "track", "userId": "u", "event": "E", "properties": properties})


JSON_PAYLOADS = st.one_of(
    st.builds(valid_event_with, JSON_OBJECTS),
    st.builds(valid_event_with, JSON_OBJECTS),
    st.binary(max_size=200),
    st.builds(orjson.dumps, json_values()),
    st.builds(orjson.dumps, event_like()),
    st.builds(orjson.dumps, event_like()),
    st.sampled_from(
        [b'{"type":"track","userId":"\\ud800","event":"e"}', b"[" * 2000, b"1e400", b"\xff"]
    ),
)
SETTINGS = st.one_of(
    st.just(b""),
    st.just(b""),
    st.builds(orjson.dumps, JSON_OBJECTS),
    st.builds(orjson.dumps, json_values()),
    st.binary(max_size=40),
    st.just(b'{"a":"\\ud800"}'),
)

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
#: Timestamps inside and outside years 1-9999 and out-of-range nanos.
VALID_TIMESTAMPS = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(-62135596800, 253402300799),
    nanos=st.integers(0, 999_999_999),
)
TIMESTAMPS = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.one_of(
        INT64,
        st.integers(-62135596800, 253402300799),
        st.sampled_from([0, -62135596801, -62135596800, 253402300799, 253402300800]),
        st.sampled_from([-(2**63), 2**63 - 1]),
    ),
    nanos=st.one_of(st.integers(0, 999_999_999), INT32, st.sampled_from([-1, 10**9])),
)


def api_keys(live: LiveStack) -> st.SearchStrategy[str]:
    ingest, admin = live.stack.keys["ingest"], live.stack.keys["admin"]
    return st.one_of(
        st.just(""),
        st.just(""),
        st.just(ingest),
        st.just(ingest),
        st.just(admin),
        st.text(max_size=60),
        st.builds(
            lambda h, s: f"inlet_{h}_{s}", st.text("0123456789abcdef", max_size=17), st.text()
        ),
        st.builds(lambda suffix: ingest + suffix, st.text(min_size=1, max_size=5)),
        st.builds(lambda cut: ingest[:cut], st.integers(0, len(ingest) - 1)),
    )


def call_metadata(live: LiveStack) -> st.SearchStrategy[Metadata | None]:
    return st.one_of(
        st.none(),
        st.just(bearer(live.stack.keys["ingest"])),
        st.just(bearer(live.stack.keys["ingest"])),
        ASCII.map(lambda token: [("authorization", "Bearer " + token)]),
        ASCII.map(lambda value: [("authorization", value)]),
    )


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def nested_struct(target: struct_pb2.Struct, depth: int) -> None:
    """Fill `target` in place with `depth` nested Structs (a copy would hit the depth limit)."""
    for _ in range(depth):
        target = target.fields["d"].struct_value
    target.fields["leaf"].number_value = 1


def wide_struct(target: struct_pb2.Struct, count: int) -> None:
    for i in range(count):
        target.fields[f"k{i}"].number_value = i


#: Struct levels the core's protobuf decoder still accepts inside
#: IngestItem.event.track.properties (upb stops at 100 message levels; each Struct
#: level costs three: Struct, map entry, Value). Deeper ones hit the decode bug.
MAX_STRUCT_DEPTH: Final = 31


@st.composite
def typed_events(draw: st.DrawFn) -> events_pb2.Event:
    text = st.text(max_size=20)
    some = st.text(min_size=1, max_size=20)
    event = events_pb2.Event(
        message_id=draw(st.one_of(st.just(""), some, some, st.text(min_size=250, max_size=300))),
        user_id=draw(st.one_of(some, some, text)),
        anonymous_id=draw(text),
        channel=draw(text),
        version=draw(text),
        original_json=draw(text),
    )
    for field in ("timestamp", "sent_at", "received_at", "original_timestamp"):
        if draw(st.booleans()):
            getattr(event, field).CopyFrom(draw(VALID_TIMESTAMPS | TIMESTAMPS))
    for field in ("context", "integrations", "extra"):
        if draw(st.booleans()):
            getattr(event, field).CopyFrom(to_struct(draw(JSON_OBJECTS)))
    call_type = draw(st.sampled_from([None, *TYPES, "track", "identify", "page"]))
    if call_type is not None:
        body = getattr(event, call_type)
        body.SetInParent()
        for name in ("event", "name", "category", "group_id", "previous_id"):
            if name in body.DESCRIPTOR.fields_by_name:
                setattr(body, name, draw(st.one_of(some, some, text)))
        struct_field = next(
            (n for n in ("properties", "traits") if n in body.DESCRIPTOR.fields_by_name), None
        )
        if struct_field is not None:
            struct = getattr(body, struct_field)
            shape = draw(st.sampled_from(["json", "json", "deep", "wide", "non-finite"]))
            if shape == "json":
                struct.update(draw(JSON_OBJECTS))
            elif shape == "deep":
                nested_struct(struct, draw(st.integers(1, MAX_STRUCT_DEPTH + 8)))
            elif shape == "wide":
                wide_struct(struct, draw(st.sampled_from([10, 100, 1000])))
            else:
                struct.fields["n"].number_value = draw(st.sampled_from([math.inf, -math.inf]))
                if draw(st.booleans()):
                    struct.fields["n"].number_value = math.nan
    return event


@st.composite
def ingest_items(draw: st.DrawFn, live: LiveStack) -> events_pb2.IngestItem:
    """Anything, or (half the time) an item that should be stored: a right key and
    settings, a Spec event with random properties, a receive time in range."""
    if draw(st.booleans()):
        return events_pb2.IngestItem(
            api_key=draw(st.sampled_from([live.stack.keys["ingest"], live.stack.keys["admin"]])),
            settings_json=draw(st.just(b"") | st.builds(orjson.dumps, JSON_OBJECTS)),
            json=draw(st.builds(valid_event_with, JSON_OBJECTS)),
            received_at=draw(st.none() | VALID_TIMESTAMPS),
        )
    item = events_pb2.IngestItem(api_key=draw(api_keys(live)), settings_json=draw(SETTINGS))
    if draw(st.booleans()):
        item.json = draw(JSON_PAYLOADS)
    elif draw(st.booleans()):
        item.event.CopyFrom(draw(typed_events()))
    if draw(st.booleans()):
        item.received_at.CopyFrom(draw(TIMESTAMPS))
    return item


# -- properties ----------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_ingest_random_items(live: LiveStack, channel: grpc.Channel, data: st.DataObject) -> None:
    item = data.draw(ingest_items(live), label="item")
    metadata = data.draw(call_metadata(live), label="metadata")
    outcome = call(stub(channel).Ingest, item, metadata)
    check_status(outcome)
    if outcome.code == grpc.StatusCode.OK:
        check_result(outcome.reply)
        event(f"item {events_pb2.Outcome.Name(outcome.reply.outcome)}")
        if item.WhichOneof("payload") == "json" and (
            outcome.reply.outcome == events_pb2.OUTCOME_STORED
        ):
            assert stored_payload(live, outcome.reply.message_id) == item.json
    still_works(live, channel)


@FUZZ
@given(data=st.data())
def test_ingest_batch_random_items(
    live: LiveStack, channel: grpc.Channel, data: st.DataObject
) -> None:
    items = data.draw(st.lists(ingest_items(live), max_size=8), label="items")
    metadata = data.draw(call_metadata(live), label="metadata")
    request = events_pb2.IngestBatchRequest()
    for item in items:  # CopyFrom: the constructor's copy hits protobuf's depth limit
        request.items.add().CopyFrom(item)
    outcome = call(stub(channel).IngestBatch, request, metadata)
    if not decodes(type(request), request.SerializeToString()):
        check_status(outcome)
        return still_works(live, channel)
    assert outcome.code == grpc.StatusCode.OK, outcome  # only an oversized batch fails as a whole
    results = outcome.reply.results
    assert len(results) == len(items)
    for item, result in zip(items, results, strict=True):
        check_result(result)
        event(f"item {events_pb2.Outcome.Name(result.outcome)} {result.reason}")
        if item.WhichOneof("payload") == "json" and result.outcome == events_pb2.OUTCOME_STORED:
            assert stored_payload(live, result.message_id) == item.json
    still_works(live, channel)


@FUZZ
@given(event=typed_events(), received_at=st.none() | TIMESTAMPS)
def test_typed_events(
    live: LiveStack,
    channel: grpc.Channel,
    event: events_pb2.Event,
    received_at: timestamp_pb2.Timestamp | None,
) -> None:
    item = events_pb2.IngestItem(received_at=received_at)
    item.event.CopyFrom(event)  # the constructor's copy would hit protobuf's depth limit
    outcome = call(stub(channel).Ingest, item, bearer(live.stack.keys["ingest"]))
    check_status(outcome)
    if outcome.code == grpc.StatusCode.OK:
        check_result(outcome.reply)
        if event.message_id and outcome.reply.outcome == events_pb2.OUTCOME_STORED:
            assert outcome.reply.message_id == event.message_id
            assert stored_payload(live, event.message_id) is not None
    still_works(live, channel)


# -- invalid UTF-8 spliced into string fields -------------------------------------------------

MARK: Final = "\x01MARK\x01"  # 6 bytes, unlikely anywhere else in a message


def _item_with_mark(field: str) -> events_pb2.IngestItem:
    """A valid item whose `field` holds MARK (the rest a plain track event)."""
    item = events_pb2.IngestItem()
    if field == "api_key":
        item.api_key = MARK
        item.json = valid_json("utf8-api-key")
        return item
    event = item.event
    event.user_id, event.message_id = "u-utf8", "utf8-typed"
    event.track.event = "Fuzzed"
    if field == "struct_key":
        event.track.properties.fields[MARK].string_value = "v"
    elif field == "struct_value":
        event.track.properties.fields["k"].string_value = MARK
    elif field == "track.event":
        event.track.event = MARK
    else:
        setattr(event, field, MARK)
    return item


STRING_FIELDS: Final = [
    "api_key",
    "message_id",
    "user_id",
    "anonymous_id",
    "channel",
    "version",
    "original_json",
    "track.event",
    "struct_key",
    "struct_value",
]
INVALID_UTF8: Final = [
    b"\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
]


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    """Exactly len(MARK) bytes that are not UTF-8."""
    core = draw(st.sampled_from(INVALID_UTF8))
    before = draw(st.integers(0, len(MARK) - len(core)))
    spliced = b"a" * before + core + b"a" * (len(MARK) - len(core) - before)
    with pytest.raises(UnicodeDecodeError):
        spliced.decode("utf-8")
    return spliced


def spliced(field: str, bad: bytes) -> bytes:
    wire = _item_with_mark(field).SerializeToString()
    assert wire.count(MARK.encode()) == 1
    return wire.replace(MARK.encode(), bad)


@FUZZ
@given(field=st.sampled_from(STRING_FIELDS), bad=invalid_utf8(), batch=st.booleans())
def test_invalid_utf8_in_string_fields(
    live: LiveStack, channel: grpc.Channel, field: str, bad: bytes, batch: bool
) -> None:
    wire = spliced(field, bad)
    metadata = bearer(live.stack.keys["ingest"])
    if batch:
        # IngestBatchRequest.items (field 1, length-delimited) holding the spliced item.
        request = b"\x0a" + _varint(len(wire)) + wire
        outcome = call(
            raw_method(channel, INGEST_BATCH, events_pb2.IngestBatchResponse), request, metadata
        )
    else:
        outcome = call(raw_method(channel, INGEST, events_pb2.IngestResult), wire, metadata)
    check_status(outcome)
    assert outcome.code != grpc.StatusCode.OK, "undecodable bytes must not be accepted"
    still_works(live, channel)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@FUZZ
@given(wire=st.binary(max_size=200), batch=st.booleans())
def test_random_wire_bytes(
    live: LiveStack, channel: grpc.Channel, wire: bytes, batch: bool
) -> None:
    path, reply = (
        (INGEST_BATCH, events_pb2.IngestBatchResponse)
        if batch
        else (INGEST, events_pb2.IngestResult)
    )
    outcome = call(raw_method(channel, path, reply), wire, bearer(live.stack.keys["ingest"]))
    check_status(outcome)
    still_works(live, channel)


# -- specific cases -----------------------------------------------------------------------


def test_deepest_decodable_typed_event_with_nul_bytes_is_stored(
    live: LiveStack, channel: grpc.Channel
) -> None:
    def item_nested(depth: int, message_id: str) -> events_pb2.IngestItem:
        item = events_pb2.IngestItem()
        item.event.message_id, item.event.user_id = message_id, "u\x00"
        item.event.track.event = "E\x00"
        nested_struct(item.event.track.properties, depth)  # in place: no copy
        return item

    # MAX_STRUCT_DEPTH is the installed protobuf's limit, exactly.
    too_deep = item_nested(MAX_STRUCT_DEPTH + 1, "x").SerializeToString()
    assert not decodes(events_pb2.IngestItem, too_deep)
    message_id = fresh_id("typed")
    item = item_nested(MAX_STRUCT_DEPTH, message_id)
    outcome = call(stub(channel).Ingest, item, bearer(live.stack.keys["ingest"]))
    assert (
        outcome.code == grpc.StatusCode.OK and outcome.reply.outcome == events_pb2.OUTCOME_STORED
    ), outcome
    stored = orjson.loads(stored_payload(live, message_id) or b"null")
    assert stored["userId"] == "u\x00" and stored["event"] == "E\x00"
    still_works(live, channel)


def test_struct_with_10000_fields_is_stored(live: LiveStack, channel: grpc.Channel) -> None:
    message_id = fresh_id("wide")
    event = events_pb2.Event(message_id=message_id, user_id="u", track=events_pb2.Track(event="E"))
    wide_struct(event.track.properties, 10_000)
    outcome = call(
        stub(channel).Ingest, events_pb2.IngestItem(event=event), bearer(live.stack.keys["ingest"])
    )
    assert (
        outcome.code == grpc.StatusCode.OK and outcome.reply.outcome == events_pb2.OUTCOME_STORED
    ), outcome
    stored = orjson.loads(stored_payload(live, message_id) or b"null")
    assert len(stored["properties"]) == 10_000


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_non_finite_struct_number_is_invalid_argument(
    live: LiveStack, channel: grpc.Channel, value: float
) -> None:
    event = events_pb2.Event(user_id="u", track=events_pb2.Track(event="E"))
    event.track.properties.fields["n"].number_value = value
    outcome = call(
        stub(channel).Ingest, events_pb2.IngestItem(event=event), bearer(live.stack.keys["ingest"])
    )
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "wrong_type"), (
        outcome
    )


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(253402300800, 0), (-62135596801, 0), (2**63 - 1, 0), (-(2**63), 0)],
)
def test_received_at_outside_years_1_to_9999_is_invalid_argument(
    live: LiveStack, channel: grpc.Channel, seconds: int, nanos: int
) -> None:
    item = events_pb2.IngestItem(
        json=valid_json(fresh_id("recv")),
        received_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
    )
    outcome = call(stub(channel).Ingest, item, bearer(live.stack.keys["ingest"]))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome


def test_batch_of_max_items_is_answered_and_one_more_is_refused(
    live: LiveStack, channel: grpc.Channel
) -> None:
    limit = live.stack.core.config.max_batch_items
    empty = events_pb2.IngestItem()  # no key, no payload: each rejected on its own
    full = call(stub(channel).IngestBatch, events_pb2.IngestBatchRequest(items=[empty] * limit))
    assert full.code == grpc.StatusCode.OK and len(full.reply.results) == limit
    assert all(r.code == grpc.StatusCode.UNAUTHENTICATED.value[0] for r in full.reply.results)
    over = call(
        stub(channel).IngestBatch, events_pb2.IngestBatchRequest(items=[empty] * (limit + 1))
    )
    assert (over.code, over.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "batch_too_large"), over
    still_works(live, channel)


# -- undecodable requests: INVALID_ARGUMENT, not UNKNOWN ---------------------------------------


def test_invalid_utf8_in_api_key_is_invalid_argument(
    live: LiveStack, channel: grpc.Channel
) -> None:
    wire = spliced("api_key", b"A\xffA\xedAA")
    outcome = call(raw_method(channel, INGEST, events_pb2.IngestResult), wire)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome


def test_invalid_utf8_in_a_batch_item_is_invalid_argument(
    live: LiveStack, channel: grpc.Channel
) -> None:
    wire = spliced("user_id", b"\xed\xa0\x80aaa")  # a UTF-8-encoded lone surrogate
    request = b"\x0a" + _varint(len(wire)) + wire
    method = raw_method(channel, INGEST_BATCH, events_pb2.IngestBatchResponse)
    outcome = call(method, request, bearer(live.stack.keys["ingest"]))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome


def test_corrupt_wire_bytes_are_invalid_argument(live: LiveStack, channel: grpc.Channel) -> None:
    method = raw_method(channel, INGEST, events_pb2.IngestResult)
    outcome = call(method, b"\xff\xff\xff\xff", bearer(live.stack.keys["ingest"]))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome


def test_struct_nested_beyond_the_decoder_limit_is_refused_cleanly(
    live: LiveStack, channel: grpc.Channel
) -> None:
    item = events_pb2.IngestItem()
    item.event.user_id, item.event.track.event = "u", "E"
    nested_struct(item.event.track.properties, MAX_STRUCT_DEPTH + 1)  # built in place
    wire = item.SerializeToString()
    method = raw_method(channel, INGEST, events_pb2.IngestResult)
    outcome = call(method, wire, bearer(live.stack.keys["ingest"]))
    assert outcome.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
        outcome
    )
