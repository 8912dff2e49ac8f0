"""The core's gRPC surface, called the way internal services call it."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from inlet.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
)
from tests.stack import Stack
from tests.waiting import eventually

TRACK_JSON = b'{"type":"track","userId":"u1","event":"Signed Up","messageId":"g-1"}'


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


async def test_ingest_json_with_call_credentials(stack: Stack, channel: grpc.aio.Channel) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    result = await stub.Ingest(
        events_pb2.IngestItem(json=TRACK_JSON), metadata=bearer(stack.keys["ingest"]), timeout=5
    )
    assert result.outcome == events_pb2.OUTCOME_STORED and result.sequence > 0
    again = await stub.Ingest(
        events_pb2.IngestItem(json=TRACK_JSON), metadata=bearer(stack.keys["ingest"]), timeout=5
    )
    assert again.outcome == events_pb2.OUTCOME_DUPLICATE and again.message_id == "g-1"


async def test_ingest_typed_event_gets_the_same_validation(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    traits = json_format.ParseDict({"email": "a@example.com"}, struct_pb2.Struct())
    event = events_pb2.Event(
        message_id="typed-1", user_id="u2", identify=events_pb2.Identify(traits=traits)
    )
    result = await stub.Ingest(
        events_pb2.IngestItem(event=event), metadata=bearer(stack.keys["ingest"]), timeout=5
    )
    assert result.outcome == events_pb2.OUTCOME_STORED
    payload = await stack.store.get_event_payload(stack.account_ids["acme"], "typed-1")
    assert payload is not None and b'"email":"a@example.com"' in payload

    no_event_name = events_pb2.Event(message_id="typed-2", user_id="u2", track=events_pb2.Track())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(
            events_pb2.IngestItem(event=no_event_name), metadata=bearer(stack.keys["ingest"])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "track requires `event`"
    assert reason_of(caught.value) == "missing_field"


@pytest.mark.parametrize(
    ("metadata", "code", "reason"),
    [
        ([], grpc.StatusCode.UNAUTHENTICATED, "missing_api_key"),
        (
            bearer("inlet_0123456789abcdef_wrong"),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_api_key",
        ),
    ],
)
async def test_ingest_refuses_bad_keys_with_a_reason(
    channel: grpc.aio.Channel, metadata: list[tuple[str, str]], code: grpc.StatusCode, reason: str
) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(events_pb2.IngestItem(json=TRACK_JSON), metadata=metadata, timeout=5)
    assert caught.value.code() == code
    assert reason_of(caught.value) == reason


async def test_ingest_batch_judges_each_item(stack: Stack, channel: grpc.aio.Channel) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    items = [
        events_pb2.IngestItem(json=TRACK_JSON),
        events_pb2.IngestItem(json=b'{"type":"track","userId":"u1"}'),
        events_pb2.IngestItem(json=TRACK_JSON),  # same messageId in the same batch
        events_pb2.IngestItem(json=b'{"type":"fly","userId":"u1"}'),
        events_pb2.IngestItem(json=TRACK_JSON, api_key="inlet_0123456789abcdef_wrong"),
        events_pb2.IngestItem(
            json=b'{"type":"page","userId":"u1","messageId":"g-2"}', settings_json=b"[]"
        ),
    ]
    reply = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=items), metadata=bearer(stack.keys["ingest"]), timeout=5
    )
    got = [
        (r.outcome, grpc.StatusCode.OK if r.code == 0 else r.code, r.reason) for r in reply.results
    ]
    assert got == [
        (events_pb2.OUTCOME_STORED, grpc.StatusCode.OK, ""),
        (events_pb2.OUTCOME_REJECTED, grpc.StatusCode.INVALID_ARGUMENT.value[0], "missing_field"),
        (events_pb2.OUTCOME_DUPLICATE, grpc.StatusCode.OK, ""),
        (events_pb2.OUTCOME_REJECTED, grpc.StatusCode.UNIMPLEMENTED.value[0], "unknown_type"),
        (events_pb2.OUTCOME_REJECTED, grpc.StatusCode.UNAUTHENTICATED.value[0], "invalid_api_key"),
        (
            events_pb2.OUTCOME_REJECTED,
            grpc.StatusCode.INVALID_ARGUMENT.value[0],
            "invalid_settings",
        ),
    ]
    assert await stack.store.count_events(stack.account_ids["acme"]) == 1


async def test_an_unconvertible_typed_event_is_rejected_alone(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    nan = json_format.ParseDict({}, struct_pb2.Struct())
    nan["score"] = float("nan")
    bad = events_pb2.Event(
        message_id="t-bad", user_id="u", identify=events_pb2.Identify(traits=nan)
    )
    items = [events_pb2.IngestItem(event=bad), events_pb2.IngestItem(json=TRACK_JSON)]
    reply = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=items), metadata=bearer(stack.keys["ingest"]), timeout=5
    )
    assert [r.outcome for r in reply.results] == [
        events_pb2.OUTCOME_REJECTED,
        events_pb2.OUTCOME_STORED,
    ]
    assert reply.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_a_typed_value_with_no_kind_is_rejected_naming_the_field(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    """A Node.js client with proto-loader's `keepCase` that spells `number_value` as
    `numberValue` sends Values with no kind: refused, not stored as null."""
    properties = struct_pb2.Struct()
    properties.fields["quantity"].Clear()  # an entry whose Value has no kind
    properties.fields["sku"].Clear()
    bad = events_pb2.Event(
        message_id="t-empty",
        user_id="u",
        track=events_pb2.Track(event="Bought", properties=properties),
    )
    items = [events_pb2.IngestItem(event=bad), events_pb2.IngestItem(json=TRACK_JSON)]
    stub = events_pb2_grpc.EventServiceStub(channel)
    reply = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=items), metadata=bearer(stack.keys["ingest"]), timeout=5
    )
    rejected, stored = reply.results
    assert rejected.outcome == events_pb2.OUTCOME_REJECTED
    assert (rejected.code, rejected.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "invalid_value",
    )
    assert rejected.message.startswith("`track.properties.") and "has no value" in rejected.message
    assert stored.outcome == events_pb2.OUTCOME_STORED
    assert await stack.store.count_events(stack.account_ids["acme"]) == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(events_pb2.IngestItem(event=bad), metadata=bearer(stack.keys["ingest"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "invalid_value"


async def test_a_typed_event_stores_whole_numbers_as_its_json_twin_does(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = stack.keys["admin"]
    properties = json_format.ParseDict(
        {"quantity": 3, "price": 2.5, "big": 2**60}, struct_pb2.Struct()
    )
    traits = json_format.ParseDict({"logins": 5, "score": 2.5}, struct_pb2.Struct())
    items = [
        events_pb2.IngestItem(
            event=events_pb2.Event(
                message_id="typed",
                user_id="u1",
                track=events_pb2.Track(event="B", properties=properties),
            )
        ),
        events_pb2.IngestItem(
            json=b'{"messageId":"json","userId":"u1","type":"track","event":"B",'
            b'"properties":{"quantity":3,"price":2.5,"big":1152921504606846976}}'
        ),
        events_pb2.IngestItem(
            event=events_pb2.Event(
                message_id="typed-identify",
                user_id="u1",
                identify=events_pb2.Identify(traits=traits),
            )
        ),
    ]
    stub = events_pb2_grpc.EventServiceStub(channel)
    reply = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=items), metadata=bearer(key), timeout=5
    )
    assert all(r.outcome == events_pb2.OUTCOME_STORED for r in reply.results), reply
    listed = await stub.ListEvents(
        events_pb2.ListEventsRequest(types=["track"]), metadata=bearer(key)
    )
    typed, sent_as_json = (orjson.loads(e.json)["properties"] for e in listed.events)
    # Whole numbers as integers, as the JSON twin has them; 2^60 is beyond 2^53: a double.
    assert orjson.dumps(typed, option=orjson.OPT_SORT_KEYS) == (
        b'{"big":1.152921504606847e+18,"price":2.5,"quantity":3}'
    )
    assert (typed["quantity"], typed["price"]) == (sent_as_json["quantity"], sent_as_json["price"])
    profiles = profiles_pb2_grpc.ProfileServiceStub(channel)
    found = await profiles.GetProfile(profiles_pb2.GetProfileRequest(id="u1"), metadata=bearer(key))
    assert {k: t.value_json for k, t in found.traits.items()} == {"logins": "5", "score": "2.5"}


async def test_ingest_batch_refuses_oversized_batches(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    too_many = [events_pb2.IngestItem(json=TRACK_JSON)] * (stack.core.config.max_batch_items + 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestBatch(
            events_pb2.IngestBatchRequest(items=too_many), metadata=bearer(stack.keys["ingest"])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "batch_too_large"


async def test_admin_creates_lists_and_revokes_keys(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    events = events_pb2_grpc.EventServiceStub(channel)
    created = await admin.CreateKey(
        admin_pb2.CreateKeyRequest(scopes=["ingest"], label="segment-prod"),
        metadata=bearer(stack.keys["admin"]),
    )
    assert created.api_key.startswith(f"inlet_{created.key.key_id}_")
    assert created.key.account == "acme" and list(created.key.scopes) == ["ingest"]

    listed = await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=bearer(stack.keys["admin"]))
    assert created.key.key_id in {k.key_id for k in listed.keys}
    assert all(not k.HasField("revoked_at") for k in listed.keys)

    await events.Ingest(events_pb2.IngestItem(json=TRACK_JSON), metadata=bearer(created.api_key))
    revoked = await admin.RevokeKey(
        admin_pb2.RevokeKeyRequest(key_id=created.key.key_id), metadata=bearer(stack.keys["admin"])
    )
    assert revoked.key.HasField("revoked_at")
    # Effective at once, although the key was cached a moment ago.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.Ingest(
            events_pb2.IngestItem(json=TRACK_JSON), metadata=bearer(created.api_key)
        )
    assert reason_of(caught.value) == "invalid_api_key"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.RevokeKey(
            admin_pb2.RevokeKeyRequest(key_id="ffffffffffffffff"),
            metadata=bearer(stack.keys["admin"]),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_admin_needs_the_admin_scope_and_stays_in_its_account(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=bearer(stack.keys["ingest"]))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    other = await stack.add_key("other-admin", account="globex", scopes=("admin",))
    listed = await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=bearer(other))
    assert {k.account for k in listed.keys} == {"globex"}
    acme_key_id = stack.keys["ingest"].split("_")[1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.RevokeKey(
            admin_pb2.RevokeKeyRequest(key_id=acme_key_id), metadata=bearer(other)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_admin_rejects_unknown_scopes(stack: Stack, channel: grpc.aio.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.CreateKey(
            admin_pb2.CreateKeyRequest(scopes=["root"]), metadata=bearer(stack.keys["admin"])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection(stack: Stack, channel: grpc.aio.Channel) -> None:
    health: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs declare no methods
    for service in ("", "inlet.v1.EventService", "inlet.v1.AdminService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # Its type stubs take only a sync channel and type no methods.
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for reply in stub.ServerReflectionInfo(iter([request])):
        names = {s.name for s in reply.list_services_response.service}
        assert {"inlet.v1.EventService", "inlet.v1.AdminService", "grpc.health.v1.Health"} <= names
        break


async def test_health_watch_streams_status_changes(stack: Stack, channel: grpc.aio.Channel) -> None:
    """Watch (a streaming method written with context.write, not a generator) goes through
    the interceptors too: gRPC clients' health checking uses it."""
    health: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs declare no methods
    call = health.Watch(health_pb2.HealthCheckRequest(service="inlet.v1.EventService"))
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    await stack.core.health.enter_graceful_shutdown()
    second = await call.read()
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    call.cancel()
    registry = stack.core.metrics.registry
    labels = {"method": "/grpc.health.v1.Health/Watch", "code": "CANCELLED"}
    await eventually(
        lambda: registry.get_sample_value("inlet_grpc_requests_total", labels) == 1,
        what="the cancelled Watch in inlet_grpc_requests_total",
    )


async def test_graceful_shutdown_goes_not_serving_then_stops(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.core_target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs declare no methods
        await stack.core.health.enter_graceful_shutdown()
        reply = await health.Check(health_pb2.HealthCheckRequest(service="inlet.v1.EventService"))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_poisoned_item_does_not_fail_others_sharing_its_commit(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    poisoned = events_pb2.IngestItem(json=TRACK_JSON.replace(b"g-1", b"g-poison"))
    poisoned.received_at.seconds = 2**62  # beyond any date; once overflowed SQLite
    good = events_pb2.IngestItem(json=TRACK_JSON)
    metadata = bearer(stack.keys["ingest"])
    reply = await stub.IngestBatch(
        events_pb2.IngestBatchRequest(items=[good, poisoned]), metadata=metadata, timeout=5
    )
    assert [r.outcome for r in reply.results] == [
        events_pb2.OUTCOME_STORED,
        events_pb2.OUTCOME_REJECTED,
    ]
    assert reply.results[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.mark.parametrize("seconds", [1, 10**12])
async def test_admin_refuses_expiry_in_the_past_or_beyond_year_9999(
    stack: Stack, channel: grpc.aio.Channel, seconds: int
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    request = admin_pb2.CreateKeyRequest(scopes=["ingest"])
    request.expires_at.seconds = seconds
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.CreateKey(request, metadata=bearer(stack.keys["admin"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "invalid_expiry"


@pytest.mark.parametrize("nanos", [-1, 1_000_000_000])
async def test_received_at_with_invalid_nanos_is_refused(
    stack: Stack, channel: grpc.aio.Channel, nanos: int
) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    item = events_pb2.IngestItem(json=TRACK_JSON)
    item.received_at.seconds, item.received_at.nanos = 1_700_000_000, nanos
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(item, metadata=bearer(stack.keys["ingest"]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
