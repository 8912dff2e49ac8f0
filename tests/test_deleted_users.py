"""A deleted user stays deleted: late redeliveries of what a `delete` covered are answered
200 `suppressed` and not stored, over every route, on both stores (README, "Deleted users")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from prometheus_client import CollectorRegistry

from inlet.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
)
from tests.service.test_grpc import bearer
from tests.stack import Stack, basic, start_stack
from tests.store.test_conformance import erased

#: Segment's `receivedAt` of each event: the identify, the delete a minute later, and an
#: event of the user coming back after it.
BEFORE, DELETED, AFTER = (
    "2026-03-01T10:00:00.000Z",
    "2026-03-01T10:01:00.000Z",
    "2026-03-01T10:30:00.000Z",
)


@pytest.fixture(params=["sqlite", "postgres"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """Core and bridge on one registry (as `inlet serve`), on each store."""
    database = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    running = await start_stack(tmp_path, database=database, registry=CollectorRegistry())
    yield running
    await running.stop()


def identify(message_id: str, received_at: str, **traits: Any) -> dict[str, Any]:
    """As Segment delivers it: `receivedAt` stamped by Segment, `timestamp` by the device."""
    return {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "anon-1",
        "messageId": message_id,
        "timestamp": received_at,
        "receivedAt": received_at,
        "traits": traits,
    }


DELETE = {
    "type": "delete",
    "userId": "u1",
    "messageId": "delete-reg-1::job-1",
    "context": None,
    "integrations": None,
    "timestamp": DELETED,
    "receivedAt": DELETED,
}


async def post(
    session: aiohttp.ClientSession, stack: Stack, event: dict[str, Any], path: str = "/segment"
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": basic(stack.keys["ingest"])}
    async with session.post(stack.url + path, json=event, headers=headers) as reply:
        return reply.status, await reply.json()


async def get_profile(stack: Stack, id: str) -> profiles_pb2.Profile | None:
    await erased(stack.store)
    async with grpc.aio.insecure_channel(stack.core_target) as channel:
        stub = profiles_pb2_grpc.ProfileServiceStub(channel)
        try:
            return await stub.GetProfile(
                profiles_pb2.GetProfileRequest(id=id), metadata=bearer(stack.keys["admin"])
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return None


def counted(stack: Stack, event_type: str, outcome: str) -> float:
    registry = stack.core.metrics.registry
    labels = {"type": event_type, "outcome": outcome, "reason": ""}
    return registry.get_sample_value("inlet_events_total", labels) or 0.0


async def test_a_late_redelivery_from_before_the_delete_is_suppressed_and_the_user_stays_gone(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The reported case: identify, delete, then Segment's retry of the identify."""
    first = identify("i-1", BEFORE, email="u1@example.com", plan="pro")
    page = {
        "type": "page",
        "anonymousId": "anon-1",
        "name": "Home",
        "messageId": "p-1",
        "receivedAt": BEFORE,
    }
    async with aiohttp.ClientSession() as session:
        assert (await post(session, stack, first))[0] == 200
        assert await get_profile(stack, "u1") is not None
        assert await post(session, stack, DELETE) == (
            200,
            {"message": "stored", "messageId": DELETE["messageId"]},
        )
        caplog.set_level("INFO", "inlet.events")
        # Segment retries for hours: the identify comes again, and so does a page the
        # device linked to u1 sent before the delete.
        for _ in range(2):
            status, body = await post(session, stack, first)
            assert (status, body["messageId"], body["suppressed"]) == (200, "i-1", True)
            assert "deleted" in body["message"]
        status, body = await post(session, stack, page)
        assert (status, body.get("suppressed")) == (200, True)
    assert await get_profile(stack, "u1") is None
    assert await get_profile(stack, "anon-1") is None
    account = stack.account_ids["acme"]
    assert await stack.store.get_event_payload(account, "i-1") is None
    assert await stack.store.get_event_payload(account, "p-1") is None
    assert counted(stack, "identify", "suppressed") == 2
    assert counted(stack, "page", "suppressed") == 1
    lines = [r for r in caplog.records if r.name == "inlet.events" and "suppressed" in r.message]
    assert len(lines) == 3
    assert {r.fields["messageId"] for r in lines} == {"i-1", "p-1"}  # type: ignore[attr-defined]


async def test_after_the_delete_the_user_is_a_returning_user(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await post(session, stack, identify("i-1", BEFORE, plan="pro")))[0] == 200
        assert (await post(session, stack, DELETE))[0] == 200
        status, body = await post(session, stack, identify("i-2", AFTER, plan="free"))
        assert (status, body) == (200, {"message": "stored", "messageId": "i-2"})
        # Suppressed is only what Segment received before the delete: the old identify.
        assert (await post(session, stack, identify("i-1", BEFORE, plan="pro")))[1]["suppressed"]
    found = await get_profile(stack, "u1")
    assert found is not None
    assert {key: value.message_id for key, value in found.traits.items()} == {"plan": "i-2"}
    assert counted(stack, "identify", "stored") == 2


async def test_grpc_answers_a_suppressed_item_with_its_own_outcome(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.core_target) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        key = bearer(stack.keys["admin"])

        def item(event: dict[str, Any]) -> events_pb2.IngestItem:
            return events_pb2.IngestItem(json=orjson.dumps(event))

        await stub.IngestBatch(
            events_pb2.IngestBatchRequest(items=[item(identify("i-1", BEFORE)), item(DELETE)]),
            metadata=key,
        )
        batch = await stub.IngestBatch(
            events_pb2.IngestBatchRequest(
                items=[item(identify("i-1", BEFORE)), item(identify("i-3", AFTER))]
            ),
            metadata=key,
        )
        assert [(r.outcome, r.message_id) for r in batch.results] == [
            (events_pb2.OUTCOME_SUPPRESSED, "i-1"),
            (events_pb2.OUTCOME_STORED, "i-3"),
        ]
        assert batch.results[0].reason == "user_deleted" and batch.results[0].sequence == 0
        single = await stub.Ingest(item(identify("i-1", BEFORE)), metadata=key)
        assert single.outcome == events_pb2.OUTCOME_SUPPRESSED


async def test_sdk_routes_list_suppressed_events_among_the_results(stack: Stack) -> None:
    """analytics-python's events carry `timestamp` (no `receivedAt`): it is what counts."""
    async with aiohttp.ClientSession() as session:
        assert (await post(session, stack, identify("i-1", BEFORE)))[0] == 200
        assert (await post(session, stack, DELETE))[0] == 200
        batch = {
            "batch": [
                {
                    "type": "track",
                    "userId": "u1",
                    "event": "Old",
                    "messageId": "t-old",
                    "timestamp": BEFORE,
                },
                {
                    "type": "track",
                    "userId": "u1",
                    "event": "New",
                    "messageId": "t-new",
                    "timestamp": AFTER,
                },
            ]
        }
        status, body = await post(session, stack, batch, "/v1/batch")
    assert status == 200
    assert (body["success"], body["stored"], body["suppressed"]) == (True, 1, 1)
    assert [(r["outcome"], r["messageId"]) for r in body["results"]] == [
        ("suppressed", "t-old"),
        ("stored", "t-new"),
    ]


async def test_an_account_can_suppress_every_later_event_of_a_deleted_user(
    stack: Stack,
) -> None:
    """Segment's "Suppress with Delete": an account setting, off by default."""
    operator = await stack.add_key("op", account="ops", scopes=("operator",))
    async with grpc.aio.insecure_channel(stack.core_target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)

        async def suppress(on: bool) -> admin_pb2.Account:
            changed = await admin.SetAccountSuppressDeletedUsers(
                admin_pb2.SetAccountSuppressDeletedUsersRequest(
                    name="acme", suppress_deleted_users=on
                ),
                metadata=bearer(operator),
            )
            return changed.account

        listed = await admin.ListAccounts(
            admin_pb2.ListAccountsRequest(), metadata=bearer(operator)
        )
        assert not next(a for a in listed.accounts if a.name == "acme").suppress_deleted_users
        assert (await suppress(True)).suppress_deleted_users
        async with aiohttp.ClientSession() as session:
            assert (await post(session, stack, DELETE))[0] == 200
            later = identify("i-4", AFTER, plan="back")
            assert (await post(session, stack, later))[1].get("suppressed") is True
            # Another user of the account is not touched.
            other = {**identify("i-5", AFTER), "userId": "u2", "anonymousId": "anon-2"}
            assert (await post(session, stack, other))[1] == {
                "message": "stored",
                "messageId": "i-5",
            }
            assert not (await suppress(False)).suppress_deleted_users
            assert (await post(session, stack, later))[1] == {
                "message": "stored",
                "messageId": "i-4",
            }
        created = await admin.CreateAccount(
            admin_pb2.CreateAccountRequest(name="strict", suppress_deleted_users=True),
            metadata=bearer(operator),
        )
        assert created.account.suppress_deleted_users


async def test_a_user_filter_lists_the_users_delete_event(stack: Stack) -> None:
    """README: delete keeps the delete event itself; the user's history shows it."""
    async with aiohttp.ClientSession() as session:
        assert (await post(session, stack, identify("i-1", BEFORE)))[0] == 200
        assert (await post(session, stack, DELETE))[0] == 200
        assert (await post(session, stack, identify("i-2", AFTER)))[0] == 200
    await erased(stack.store)
    async with grpc.aio.insecure_channel(stack.core_target) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        key = bearer(stack.keys["admin"])
        history = await stub.ListEvents(events_pb2.ListEventsRequest(user_id="u1"), metadata=key)
        assert [(e.type, e.message_id) for e in history.events] == [
            ("delete", DELETE["messageId"]),
            ("identify", "i-2"),
        ]
        deletes = await stub.ListEvents(
            events_pb2.ListEventsRequest(user_id="u1", types=["delete"]), metadata=key
        )
        assert [e.message_id for e in deletes.events] == [DELETE["messageId"]]
    found = await get_profile(stack, "u1")
    assert found is not None and dict(found.event_counts) == {"identify": 1}
