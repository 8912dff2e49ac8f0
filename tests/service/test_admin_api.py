"""AdminService beyond create/list/revoke: rotation, accounts, maintenance mode."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import timestamp_pb2

from inlet.v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc
from service.config import CoreConfig
from service.maintenance import MaintenanceMode
from service.store import SqliteStore
from tests.service.test_grpc import bearer, reason_of
from tests.stack import Stack, basic, start_stack
from tests.waiting import eventually

TRACK = b'{"type":"track","userId":"u1","event":"E"}'


@pytest.fixture
def stack(stack_on_each_store: Stack) -> Stack:
    """These tests run on both stores (the gRPC API must not care which)."""
    return stack_on_each_store


async def ingest(channel: grpc.aio.Channel, key: str, body: bytes = TRACK) -> grpc.StatusCode:
    stub = events_pb2_grpc.EventServiceStub(channel)
    try:
        await stub.Ingest(events_pb2.IngestItem(json=body), metadata=bearer(key), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_rotate_key_keeps_the_old_key_until_the_chosen_time(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    old_key = stack.keys["admin"]
    listed = await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=bearer(old_key))
    old_id = next(k.key_id for k in listed.keys if k.label == "admin")
    until = timestamp_pb2.Timestamp()
    until.FromMicroseconds(time.time_ns() // 1000 + 2_000_000)

    rotated = await admin.RotateKey(
        admin_pb2.RotateKeyRequest(key_id=old_id, old_key_valid_until=until),
        metadata=bearer(old_key),
    )
    assert rotated.api_key.startswith("inlet_") and rotated.key.key_id != old_id
    assert list(rotated.key.scopes) == ["ingest", "read", "admin"]
    assert rotated.key.label == "admin"
    # Both work during the overlap...
    assert await ingest(channel, rotated.api_key) == grpc.StatusCode.OK
    assert await ingest(channel, old_key, b'{"type":"track","userId":"u2","event":"E"}') == (
        grpc.StatusCode.OK
    )
    old = next(
        k
        for k in (await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=bearer(old_key))).keys
        if k.key_id == old_id
    )
    assert old.expires_at == until
    # ...and rotating it again, or a key of another account, is refused.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.RotateKey(
            admin_pb2.RotateKeyRequest(key_id="0000000000000000"), metadata=bearer(old_key)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rotated_key_stops_working_at_its_time(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, CoreConfig(listen="127.0.0.1:0", key_cache_ttl_s=0))
    try:
        async with grpc.aio.insecure_channel(stack.core_target) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            key = stack.keys["admin"]
            listed = await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=bearer(key))
            old_id = next(k.key_id for k in listed.keys if k.label == "admin")
            until = timestamp_pb2.Timestamp()
            until.FromMicroseconds(time.time_ns() // 1000 + 300_000)
            await admin.RotateKey(
                admin_pb2.RotateKeyRequest(key_id=old_id, old_key_valid_until=until),
                metadata=bearer(key),
            )

            async def expired() -> bool:
                return await ingest(channel, key) == grpc.StatusCode.UNAUTHENTICATED

            await eventually(expired, what="the old key to expire")
    finally:
        await stack.stop()


async def test_accounts_are_operator_business(stack: Stack, channel: grpc.aio.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    # An account's admin cannot touch other accounts or grant `operator`.
    for call in (
        admin.ListAccounts(admin_pb2.ListAccountsRequest(), metadata=bearer(stack.keys["admin"])),
        admin.CreateKey(
            admin_pb2.CreateKeyRequest(scopes=["operator"]), metadata=bearer(stack.keys["admin"])
        ),
        admin.SetMaintenance(
            admin_pb2.SetMaintenanceRequest(on=True), metadata=bearer(stack.keys["admin"])
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(caught.value) == "missing_scope"

    operator = await stack.add_key("op", account="ops", scopes=("operator",))
    created = await admin.CreateAccount(
        admin_pb2.CreateAccountRequest(name="globex", first_key_scopes=["ingest", "admin"]),
        metadata=bearer(operator),
    )
    assert created.account.name == "globex" and not created.account.suspended
    globex_key = created.first_key.api_key
    assert await ingest(channel, globex_key) == grpc.StatusCode.OK

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.CreateAccount(
            admin_pb2.CreateAccountRequest(name="globex"), metadata=bearer(operator)
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.CreateAccount(
            admin_pb2.CreateAccountRequest(name="no spaces"), metadata=bearer(operator)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    names = await admin.ListAccounts(admin_pb2.ListAccountsRequest(), metadata=bearer(operator))
    assert [a.name for a in names.accounts] == ["acme", "globex", "ops"]

    suspended = await admin.SetAccountSuspended(
        admin_pb2.SetAccountSuspendedRequest(name="globex", suspended=True),
        metadata=bearer(operator),
    )
    assert suspended.suspended
    assert await ingest(channel, globex_key) == grpc.StatusCode.PERMISSION_DENIED
    await admin.SetAccountSuspended(
        admin_pb2.SetAccountSuspendedRequest(name="globex", suspended=False),
        metadata=bearer(operator),
    )
    assert await ingest(channel, globex_key) == grpc.StatusCode.OK


async def test_maintenance_mode_makes_segment_retry(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    operator = await stack.add_key("op", account="ops", scopes=("operator",))
    headers = {"Authorization": basic(stack.keys["ingest"]), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        state = await admin.SetMaintenance(
            admin_pb2.SetMaintenanceRequest(on=True, message="moving to a new disk"),
            metadata=bearer(operator),
        )
        assert state.on and state.changed_at.seconds > 0
        async with http.post(f"{stack.url}/segment", data=TRACK, headers=headers) as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
            body = await response.json()
            assert body == {"message": "moving to a new disk", "code": "maintenance"}
        # Reads and administration go on.
        got = await admin.GetMaintenance(
            admin_pb2.GetMaintenanceRequest(), metadata=bearer(operator)
        )
        assert got.on
        await admin.SetMaintenance(
            admin_pb2.SetMaintenanceRequest(on=False), metadata=bearer(operator)
        )
        async with http.post(f"{stack.url}/segment", data=TRACK, headers=headers) as response:
            assert response.status == 200


async def test_every_core_follows_the_switch_in_the_database(tmp_path: Path) -> None:
    config = CoreConfig(listen="127.0.0.1:0", switch_refresh_s=0.05)
    stack = await start_stack(tmp_path, config)
    # Another process (the CLI, another core) flips the switch in the database.
    other = SqliteStore(tmp_path / "inlet.db")
    await other.open()
    try:
        await MaintenanceMode(other).set(True)
        async with grpc.aio.insecure_channel(stack.core_target) as channel:

            async def answered(code: grpc.StatusCode) -> bool:
                return await ingest(channel, stack.keys["ingest"]) == code

            await eventually(
                lambda: answered(grpc.StatusCode.UNAVAILABLE),
                what="the core to see maintenance mode",
            )
            await MaintenanceMode(other).set(False)
            await eventually(
                lambda: answered(grpc.StatusCode.OK), what="the core to leave maintenance mode"
            )
    finally:
        await other.close()
        await stack.stop()


def test_switch_refresh_is_configurable() -> None:
    config = CoreConfig.from_env({"INLET_SWITCH_REFRESH_S": "0.5", "INLET_FEED_POLL_S": "2"})
    assert (config.feed_poll_s, config.switch_refresh_s) == (2.0, 0.5)
    with pytest.raises(ValueError):
        CoreConfig(feed_poll_s=0)


async def test_an_admin_cannot_take_over_an_operator_key(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    await stack.add_key("op", account="ops", scopes=("operator",))
    ops_admin = await stack.add_key("ops-admin", account="ops", scopes=("admin",))
    listed = await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=bearer(ops_admin))
    op_id = next(k.key_id for k in listed.keys if "operator" in k.scopes)
    # Rotating would hand the admin a fresh operator key; revoking would lock operators out.
    for call in (
        admin.RotateKey(admin_pb2.RotateKeyRequest(key_id=op_id), metadata=bearer(ops_admin)),
        admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=op_id), metadata=bearer(ops_admin)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await ingest(channel, stack.keys["op"]) != grpc.StatusCode.UNAUTHENTICATED
