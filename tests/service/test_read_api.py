"""The internal read API against a real grpc.aio core: profiles, history, the live feed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from inlet.v1 import events_pb2, events_pb2_grpc, profiles_pb2, profiles_pb2_grpc
from tests.exact_values import EXACT_TRAITS, group_json, identify_json
from tests.service.test_grpc import bearer, reason_of
from tests.stack import Stack
from tests.store.test_conformance import erased
from tests.waiting import eventually


@pytest.fixture
def stack(stack_on_each_store: Stack) -> Stack:
    """These tests run on both stores (the gRPC API must not care which)."""
    return stack_on_each_store


async def send(
    channel: grpc.aio.Channel, key: str, *events: dict[str, Any]
) -> list[events_pb2.IngestResult]:
    stub = events_pb2_grpc.EventServiceStub(channel)
    items = [events_pb2.IngestItem(json=orjson.dumps(e)) for e in events]
    response = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=items), metadata=bearer(key), timeout=10
    )
    for result in response.results:
        assert result.outcome in (events_pb2.OUTCOME_STORED, events_pb2.OUTCOME_DUPLICATE), result
    return list(response.results)


async def send_raw(channel: grpc.aio.Channel, key: str, *events: bytes) -> None:
    """Send events written out as JSON text, exactly."""
    stub = events_pb2_grpc.EventServiceStub(channel)
    items = [events_pb2.IngestItem(json=e) for e in events]
    response = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=items), metadata=bearer(key), timeout=10
    )
    assert all(r.outcome == events_pb2.OUTCOME_STORED for r in response.results), response


async def profile(channel: grpc.aio.Channel, key: str, id: str) -> profiles_pb2.Profile:
    stub = profiles_pb2_grpc.ProfileServiceStub(channel)
    return await stub.GetProfile(profiles_pb2.GetProfileRequest(id=id), metadata=bearer(key))


def traits(found: profiles_pb2.Profile) -> dict[str, Any]:
    return {key: orjson.loads(t.value_json) for key, t in found.traits.items()}


def identify(message_id: str, timestamp: str, user: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": message_id,
        "userId": user,
        "timestamp": timestamp,
        "traits": traits,
    }


def track(message_id: str, user: str, event: str = "Clicked", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": user, "event": event, **extra}


async def test_out_of_order_identifies_keep_the_newest_value_per_trait(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    # Delivered newest first, as Segment's retries can: the older event arrives last.
    await send(channel, key, identify("i-3", "2026-03-03T00:00:00Z", "u1", plan="pro"))
    await send(
        channel,
        key,
        identify("i-2", "2026-02-02T00:00:00Z", "u1", email="new@example.com", First_Name="Ann"),
    )
    await send(
        channel,
        key,
        identify(
            "i-1", "2026-01-01T00:00:00Z", "u1", email="old@example.com", plan="free", Tier="x"
        ),
    )
    found = await profile(channel, key, "u1")
    assert traits(found) == {
        "plan": "pro",
        "email": "new@example.com",
        "firstName": "Ann",  # reserved trait: Spec name whatever the casing
        "Tier": "x",  # custom trait: the customer's key as sent
    }
    assert found.traits["email"].message_id == "i-2"
    assert found.traits["plan"].timestamp.ToJsonString() == "2026-03-03T00:00:00Z"
    assert dict(found.event_counts) == {"identify": 3}
    assert found.first_seen.ToJsonString() == "2026-01-01T00:00:00Z"
    assert found.last_seen.ToJsonString() == "2026-03-03T00:00:00Z"


async def test_alias_and_anonymous_ids_link_one_profile(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    await send(
        channel,
        key,
        {"type": "page", "anonymousId": "anon-7", "name": "Home", "messageId": "p-1"},
        {
            "type": "identify",
            "anonymousId": "anon-7",
            "userId": "u7",
            "messageId": "i-7",
            "traits": {"email": "u7@example.com"},
        },
        {"type": "alias", "previousId": "u7", "userId": "u7-new", "messageId": "a-7"},
        {
            "type": "group",
            "userId": "u7-new",
            "groupId": "g1",
            "messageId": "g-7",
            "traits": {"name": "Initech", "employees": 50},
        },
    )
    for looked_up in ("anon-7", "u7", "u7-new"):
        found = await profile(channel, key, looked_up)
        assert found.id == looked_up
        assert list(found.linked_ids) == ["anon-7", "u7", "u7-new"]
        assert traits(found) == {"email": "u7@example.com"}
        assert dict(found.event_counts) == {"page": 1, "identify": 1, "alias": 1, "group": 1}
        (group,) = found.groups
        assert group.group_id == "g1"
        assert {k: orjson.loads(v.value_json) for k, v in group.traits.items()} == {
            "name": "Initech",
            "employees": 50,
        }

    events = events_pb2_grpc.EventServiceStub(channel)
    history = await events.ListEvents(
        events_pb2.ListEventsRequest(user_id="anon-7"), metadata=bearer(key)
    )
    assert [e.message_id for e in history.events] == ["p-1", "i-7", "a-7", "g-7"]


async def test_trait_values_come_back_exactly_as_sent(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    stub = events_pb2_grpc.EventServiceStub(channel)
    items = [
        events_pb2.IngestItem(json=identify_json("n-1", "u1")),
        events_pb2.IngestItem(json=group_json("n-2", "u1", "g1")),
        events_pb2.IngestItem(json=identify_json("n-3", "u1", {"huge": "1e400"})),
    ]
    reply = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=items), metadata=bearer(key), timeout=10
    )
    assert [r.outcome for r in reply.results] == [
        events_pb2.OUTCOME_STORED,
        events_pb2.OUTCOME_STORED,
        events_pb2.OUTCOME_REJECTED,  # beyond a double's range: refused as before
    ]
    assert reply.results[2].reason == "invalid_json"

    found = await profile(channel, key, "u1")
    assert {k: t.value_json for k, t in found.traits.items()} == EXACT_TRAITS
    (group,) = found.groups
    assert {k: t.value_json for k, t in group.traits.items()} == EXACT_TRAITS
    assert orjson.loads(found.traits["id19"].value_json) == 9007199254740993123
    # The deprecated `value` still carries every value, with numbers as doubles.
    assert found.traits["count"].value.number_value == 5
    assert found.traits["id19"].value.number_value == float(9007199254740993123)
    assert json_format.MessageToDict(group.traits["nested"].value) == {
        "a": [1.0, 2.5, {"b": 0.0}],
        "c": None,
        "d": "x",
        "e": float(9007199254740993123),
    }
    assert found.traits["text"].value.string_value == "5"


async def test_a_trait_nested_too_deep_for_protobuf_comes_back_as_json_only(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    """A google.protobuf.Value nesting ~33 objects is more than protobuf decoders read:
    the profile would not decode at all. Such a value is in `value_json` alone."""
    key = stack.keys["admin"]
    nested = {depth: '{"a":' * depth + "1" + "}" * depth for depth in (30, 31, 300)}
    traits = {f"d{depth}": text for depth, text in nested.items()}
    await send_raw(channel, key, identify_json("d-1", "u1", traits))
    await send_raw(channel, key, group_json("d-2", "u1", "g1", traits))
    found = await profile(channel, key, "u1")
    for trait_values in (found.traits, found.groups[0].traits):
        assert {k: t.value_json for k, t in trait_values.items()} == traits
        assert [k for k, t in trait_values.items() if t.HasField("value")] == ["d30"]
    assert orjson.loads(found.traits["d30"].value_json) == json_format.MessageToDict(
        found.traits["d30"].value
    )


async def test_delete_erases_the_profile_and_leaves_a_record(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    await send(
        channel,
        key,
        {
            "type": "identify",
            "userId": "gone",
            "anonymousId": "anon-g",
            "messageId": "d-1",
            "traits": {"email": "gone@example.com"},
        },
        track("d-2", "gone"),
        {"type": "group", "userId": "gone", "groupId": "g9", "messageId": "d-3"},
        track("d-keep", "someone-else"),
    )
    assert (await profile(channel, key, "anon-g")).event_counts["track"] == 1
    await send(channel, key, {"type": "delete", "userId": "gone", "messageId": "del-1"})

    for id in ("gone", "anon-g"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await profile(channel, key, id)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(caught.value) == "no_profile"
    account = stack.account_ids["acme"]
    for message_id in ("d-1", "d-2", "d-3"):
        assert await stack.store.get_event_payload(account, message_id) is None
    assert await stack.store.get_event_payload(account, "d-keep") is not None
    # Nothing of the user is left in their history but the deletion itself...
    events = events_pb2_grpc.EventServiceStub(channel)
    history = await events.ListEvents(
        events_pb2.ListEventsRequest(user_id="gone"), metadata=bearer(key)
    )
    assert [(e.type, e.message_id) for e in history.events] == [("delete", "del-1")]
    # ...which is on record (not the data) for the whole account too.
    deletions = await events.ListEvents(
        events_pb2.ListEventsRequest(types=["delete"]), metadata=bearer(key)
    )
    assert [(e.user_id, e.message_id) for e in deletions.events] == [("gone", "del-1")]
    # A redelivered delete is a duplicate, and the user can start afresh.
    await send(channel, key, {"type": "delete", "userId": "gone", "messageId": "del-1"})
    await send(channel, key, track("d-4", "gone"))
    await erased(stack.store)  # until then a deleted id has no profile (PostgreSQL)
    assert dict((await profile(channel, key, "gone")).event_counts) == {"track": 1}


async def test_links_made_and_erased_in_one_batch_can_be_made_again(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    both = {"type": "track", "userId": "u5", "anonymousId": "a5", "event": "E"}
    # One transaction links u5-a5, then erases the link with the user.
    await send(
        channel,
        key,
        {**both, "messageId": "l-1"},
        {"type": "delete", "userId": "u5", "messageId": "l-2"},
    )
    await send(channel, key, {**both, "messageId": "l-3"})
    await erased(stack.store)
    assert list((await profile(channel, key, "a5")).linked_ids) == ["a5", "u5"]


async def test_two_users_of_one_browser_stay_two_profiles(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    await send(
        channel,
        key,
        {"type": "page", "anonymousId": "shared-dev", "name": "Home", "messageId": "sd-0"},
        {
            "type": "identify",
            "userId": "alice",
            "anonymousId": "shared-dev",
            "messageId": "sd-1",
            "traits": {"email": "alice@example.com"},
        },
        {
            "type": "identify",
            "userId": "bob",
            "anonymousId": "shared-dev",
            "messageId": "sd-2",
            "traits": {"email": "bob@example.com"},
        },
        track("sd-3", "bob"),
    )
    alice = await profile(channel, key, "alice")
    assert list(alice.linked_ids) == ["alice", "shared-dev"]
    assert traits(alice) == {"email": "alice@example.com"}
    # Deleting alice erases her and the browser's anonymous history, never bob.
    await send(channel, key, {"type": "delete", "userId": "alice", "messageId": "sd-del"})
    await erased(stack.store)
    bob = await profile(channel, key, "bob")
    assert traits(bob) == {"email": "bob@example.com"}
    assert dict(bob.event_counts) == {"identify": 1, "track": 1}
    account = stack.account_ids["acme"]
    assert await stack.store.get_event_payload(account, "sd-1") is None
    assert await stack.store.get_event_payload(account, "sd-2") is not None


async def test_list_events_pages_lose_and_repeat_nothing_while_events_arrive(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    await send(channel, key, *(track(f"e-{n:03}", f"user-{n % 3}") for n in range(50)))
    events = events_pb2_grpc.EventServiceStub(channel)

    async def page_through(order: events_pb2.Order.ValueType) -> list[str]:
        seen: list[str] = []
        token, added = "", 0
        while True:
            page = await events.ListEvents(
                events_pb2.ListEventsRequest(page_size=7, page_token=token, order=order),
                metadata=bearer(key),
            )
            seen += [e.message_id for e in page.events]
            # New events land between pages.
            await send(channel, key, track(f"late-{order}-{added}", "user-x"))
            added += 1
            if not page.next_page_token:
                return seen
            token = page.next_page_token

    oldest_first = await page_through(events_pb2.ORDER_OLDEST_FIRST)
    # Oldest first reaches the events added meanwhile too, each once.
    assert oldest_first[:50] == [f"e-{n:03}" for n in range(50)]
    assert len(oldest_first) == len(set(oldest_first))
    assert oldest_first[50:] == [f"late-1-{n}" for n in range(len(oldest_first) - 50)]

    newest_first = await page_through(events_pb2.ORDER_NEWEST_FIRST)
    # Newest first: everything stored when paging began, in reverse, none twice.
    assert newest_first == list(reversed(oldest_first + ["late-1-" + str(len(oldest_first) - 50)]))


async def test_list_events_filters(stack: Stack, channel: grpc.aio.Channel) -> None:
    key = stack.keys["admin"]
    await send(
        channel,
        key,
        track("f-1", "u1", "Order Completed", timestamp="2026-01-01T00:00:00Z"),
        track("f-2", "u1", "Clicked", timestamp="2026-01-02T00:00:00Z"),
        track("f-3", "u2", "Order Completed", timestamp="2026-01-03T00:00:00Z"),
        {"type": "page", "userId": "u1", "name": "Home", "messageId": "f-4"},
    )
    events = events_pb2_grpc.EventServiceStub(channel)

    async def ids(**query: Any) -> list[str]:
        response = await events.ListEvents(
            events_pb2.ListEventsRequest(**query), metadata=bearer(key)
        )
        return [e.message_id for e in response.events]

    assert await ids(name="Order Completed") == ["f-1", "f-3"]
    assert await ids(types=["Page"]) == ["f-4"]
    assert await ids(user_id="u1", types=["track"]) == ["f-1", "f-2"]
    since, until = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    since.FromJsonString("2026-01-02T00:00:00Z")
    until.FromJsonString("2026-01-03T00:00:00Z")
    assert await ids(since=since, until=until) == ["f-2"]
    stored = (await events.ListEvents(events_pb2.ListEventsRequest(), metadata=bearer(key))).events
    assert orjson.loads(stored[0].json)["event"] == "Order Completed"
    assert stored[0].key_id and stored[0].sequence < stored[1].sequence


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"page_size": 5000}, "page_size", "invalid_page_size"),
        ({"page_token": "garbage!"}, "page_token", "invalid_page_token"),
        ({"types": ["purchase"]}, "types", "invalid_type"),
    ],
)
async def test_bad_list_requests_name_the_field(
    stack: Stack,
    channel: grpc.aio.Channel,
    request_fields: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    events = events_pb2_grpc.EventServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.ListEvents(
            events_pb2.ListEventsRequest(**request_fields), metadata=bearer(stack.keys["admin"])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == reason
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == [field]


async def read_stream(call: Any, count: int, timeout: float = 10) -> list[events_pb2.StoredEvent]:
    received: list[events_pb2.StoredEvent] = []
    async with asyncio.timeout(timeout):
        while len(received) < count:
            received.append(await call.read())
    return received


async def test_subscribe_resumes_from_its_cursor_in_order(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    events = events_pb2_grpc.EventServiceStub(channel)
    await send(channel, key, *(track(f"s-{n}", "u1") for n in range(5)))

    first = events.Subscribe(events_pb2.SubscribeRequest(), metadata=bearer(key))
    got = await read_stream(first, 3)
    first.cancel()  # the consumer goes away after three events
    cursor = got[-1].sequence

    await send(channel, key, *(track(f"s-{n}", "u1") for n in range(5, 10)))
    second = events.Subscribe(
        events_pb2.SubscribeRequest(after_sequence=cursor), metadata=bearer(key)
    )
    rest = await read_stream(second, 7)
    # Live: an event committed while the stream waits arrives too.
    await send(channel, key, track("s-10", "u1"))
    rest += await read_stream(second, 1)
    second.cancel()
    assert [e.message_id for e in got + rest] == [f"s-{n}" for n in range(11)]
    sequences = [e.sequence for e in got + rest]
    assert sequences == sorted(sequences)


async def test_a_stalled_subscriber_does_not_hold_up_ingestion(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    events = events_pb2_grpc.EventServiceStub(channel)
    stalled = events.Subscribe(events_pb2.SubscribeRequest(), metadata=bearer(key))
    await send(channel, key, track("first", "u1", properties={"pad": "x" * 2000}))
    await read_stream(stalled, 1)
    # The subscriber stops reading; ~6 MB of events go in (more than any flow-control
    # window), and every batch still commits.
    async with asyncio.timeout(60):
        for batch in range(30):
            results = await send(
                channel,
                key,
                *(track(f"b{batch}-{n}", "u1", properties={"pad": "x" * 2000}) for n in range(100)),
            )
            assert all(r.outcome == events_pb2.OUTCOME_STORED for r in results)
    assert await stack.store.count_events(stack.account_ids["acme"]) == 3001
    # When it reads again, it gets everything, in order.
    rest = await read_stream(stalled, 3000, timeout=60)
    stalled.cancel()
    assert [e.message_id for e in rest[:2]] == ["b0-0", "b0-1"]
    assert rest[-1].message_id == "b29-99"


async def test_subscribe_from_now_and_by_type(stack: Stack, channel: grpc.aio.Channel) -> None:
    key = stack.keys["admin"]
    events = events_pb2_grpc.EventServiceStub(channel)
    await send(channel, key, track("old", "u1"))
    call = events.Subscribe(
        events_pb2.SubscribeRequest(from_now=True, types=["identify"]), metadata=bearer(key)
    )
    # The initial metadata says where the stream starts: what follows will come.
    metadata = dict(await call.initial_metadata())
    assert int(metadata["inlet-start-sequence"]) > 0
    await send(channel, key, track("ignored", "u1"))
    await send(channel, key, identify("new", "2026-01-01T00:00:00Z", "u1", plan="x"))
    (event,) = await read_stream(call, 1)
    call.cancel()
    assert event.message_id == "new" and event.type == "identify"


async def test_accounts_see_only_their_own_data(stack: Stack, channel: grpc.aio.Channel) -> None:
    a = stack.keys["admin"]
    b = await stack.add_key("b-reader", account="other", scopes=("ingest", "read"))
    events = events_pb2_grpc.EventServiceStub(channel)
    b_stream = events.Subscribe(events_pb2.SubscribeRequest(), metadata=bearer(b))
    await send(channel, a, identify("x-1", "2026-01-01T00:00:00Z", "shared-id", email="a@a.a"))
    await send(channel, b, track("x-2", "shared-id"))

    with pytest.raises(grpc.aio.AioRpcError):
        await profile(channel, b, "nobody")
    b_profile = await profile(channel, b, "shared-id")
    assert dict(b_profile.traits) == {} and dict(b_profile.event_counts) == {"track": 1}
    b_events = await events.ListEvents(events_pb2.ListEventsRequest(), metadata=bearer(b))
    assert [e.message_id for e in b_events.events] == ["x-2"]
    # B's stream gets B's event and never A's.
    (first,) = await read_stream(b_stream, 1)
    b_stream.cancel()
    assert first.message_id == "x-2"
    # B's cursor used with A's... there is no way to name A: every RPC is scoped by the key.
    a_events = await events.ListEvents(events_pb2.ListEventsRequest(), metadata=bearer(a))
    assert [e.message_id for e in a_events.events] == ["x-1"]


async def test_reads_need_the_read_scope(stack: Stack, channel: grpc.aio.Channel) -> None:
    ingest_only = stack.keys["ingest"]
    events = events_pb2_grpc.EventServiceStub(channel)
    calls: list[Awaitable[object]] = [
        profile(channel, ingest_only, "u1"),
        events.ListEvents(events_pb2.ListEventsRequest(), metadata=bearer(ingest_only)),
        read_stream(
            events.Subscribe(events_pb2.SubscribeRequest(), metadata=bearer(ingest_only)), 1
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(caught.value) == "missing_scope"


async def test_shutdown_ends_streams_with_unavailable(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    events = events_pb2_grpc.EventServiceStub(channel)
    call = events.Subscribe(events_pb2.SubscribeRequest(), metadata=bearer(stack.keys["admin"]))
    await send(channel, stack.keys["admin"], track("t-1", "u1"))
    await read_stream(call, 1)
    stopping = asyncio.create_task(stack.core.stop(grace=5.0))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_stream(call, 1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await stopping


async def test_subscribe_streams_are_measured(stack: Stack, channel: grpc.aio.Channel) -> None:
    key = stack.keys["admin"]
    registry = stack.core.metrics.registry
    events = events_pb2_grpc.EventServiceStub(channel)
    call = events.Subscribe(events_pb2.SubscribeRequest(), metadata=bearer(key))
    await send(channel, key, track("m-1", "u1"), track("m-2", "u1"))
    await read_stream(call, 2)
    assert registry.get_sample_value("inlet_subscribe_streams") == 1
    assert registry.get_sample_value("inlet_subscribe_delivery_delay_seconds_count") == 2
    call.cancel()
    await eventually(
        lambda: registry.get_sample_value("inlet_subscribe_streams") == 0,
        what="the server to notice the cancellation",
    )
    # The call itself, in the per-call gRPC metrics like every other RPC, once over.
    labels = {"method": "/inlet.v1.EventService/Subscribe", "code": "CANCELLED"}
    await eventually(
        lambda: registry.get_sample_value("inlet_grpc_requests_total", labels) == 1,
        what="the cancelled Subscribe in inlet_grpc_requests_total",
    )


async def test_a_subscribe_request_that_is_not_protobuf_is_invalid_argument(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    """Like the unary methods: a caller's garbled bytes are its mistake, not UNKNOWN."""
    subscribe = channel.unary_stream(
        "/inlet.v1.EventService/Subscribe",
        request_serializer=lambda raw: raw,
        response_deserializer=events_pb2.StoredEvent.FromString,
    )
    call = subscribe(b"\x0a\xff\xff\xff", metadata=bearer(stack.keys["admin"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "invalid_request"
