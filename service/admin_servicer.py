"""AdminService: API keys of the caller's account (scope `admin`); accounts and
maintenance mode of the whole deployment (scope `operator`)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from typing import Final

from inlet.v1 import admin_pb2, admin_pb2_grpc
from service import keys
from service.auth import Authenticator
from service.convert import timestamp_micros
from service.errors import AlreadyExists, InvalidArgument, InvalidEvent, NotFound, PermissionDenied
from service.maintenance import MaintenanceMode
from service.messages import account_message, key_message, timestamp
from service.rpc import Context, caller, rpc
from service.store import Account, AccountStore, KeyRecord, StoreError
from service.timestamps import now_us

ACCOUNT_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: How long a rotated key keeps working when the caller does not say.
DEFAULT_ROTATION_OVERLAP_US: Final = 24 * 3600 * 1_000_000


def _scopes(requested: Sequence[str], granter: KeyRecord, field: str) -> tuple[str, ...]:
    """Scopes for a new key; a key cannot grant `operator` unless it has it itself."""
    try:
        scopes = keys.parse_scopes(",".join(requested) or "ingest")
    except ValueError as exc:
        raise InvalidArgument(str(exc), "invalid_scope", field) from None
    if "operator" in scopes and "operator" not in granter.scopes:
        raise PermissionDenied("only an `operator` key can grant `operator`", "missing_scope")
    return scopes


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self, store: AccountStore, auth: Authenticator, maintenance: MaintenanceMode
    ) -> None:
        self._store = store
        self._auth = auth
        self._maintenance = maintenance

    @rpc
    async def WhoAmI(self, request: admin_pb2.WhoAmIRequest, context: Context) -> admin_pb2.ApiKey:
        return key_message(await caller(self._auth, context, None))

    # -- keys of the caller's account --------------------------------------------------

    @rpc
    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: Context
    ) -> admin_pb2.CreateKeyResponse:
        admin = await caller(self._auth, context, "admin")
        scopes = _scopes(request.scopes, admin, "scopes")
        expires = None
        if request.HasField("expires_at"):
            expires = self._future(request, "expires_at")
        return await self._create_key(admin.account_id, scopes, request.label, expires)

    async def _create_key(
        self, account_id: int, scopes: Sequence[str], label: str, expires: int | None
    ) -> admin_pb2.CreateKeyResponse:
        new = keys.generate_key()
        record = await self._store.create_key(
            account_id, new.key_id, new.secret_hash, scopes, label, expires
        )
        return admin_pb2.CreateKeyResponse(key=key_message(record), api_key=new.plaintext)

    @staticmethod
    def _future(
        request: admin_pb2.CreateKeyRequest | admin_pb2.RotateKeyRequest, field: str
    ) -> int:
        try:
            micros = timestamp_micros(getattr(request, field), field, "invalid_expiry")
        except InvalidEvent as error:
            raise InvalidArgument(error.message, error.reason, field) from None
        if micros <= now_us():
            raise InvalidArgument(f"`{field}` must be in the future", "invalid_expiry", field)
        return micros

    @rpc
    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: Context
    ) -> admin_pb2.ListKeysResponse:
        admin = await caller(self._auth, context, "admin")
        records = await self._store.list_keys(admin.account_id, request.include_revoked)
        return admin_pb2.ListKeysResponse(keys=[key_message(r) for r in records])

    async def _guard(self, admin: KeyRecord, key_id: str) -> None:
        """An `admin` key may not revoke or rotate an `operator` key of its account: a
        rotation hands over a new key with the same scopes (privilege escalation)."""
        target = await self._store.get_key(key_id)
        if (
            target is not None
            and target.account_id == admin.account_id
            and "operator" in target.scopes
            and "operator" not in admin.scopes
        ):
            raise PermissionDenied(
                "only an `operator` key can manage `operator` keys", "missing_scope"
            )

    @rpc
    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: Context
    ) -> admin_pb2.RevokeKeyResponse:
        admin = await caller(self._auth, context, "admin")
        await self._guard(admin, request.key_id)
        record = await self._store.revoke_key(request.key_id, admin.account_id)
        if record is None:
            raise NotFound(f"no key {request.key_id!r} in this account", "key_not_found")
        self._auth.invalidate(request.key_id)
        return admin_pb2.RevokeKeyResponse(key=key_message(record))

    @rpc
    async def RotateKey(
        self, request: admin_pb2.RotateKeyRequest, context: Context
    ) -> admin_pb2.CreateKeyResponse:
        admin = await caller(self._auth, context, "admin")
        await self._guard(admin, request.key_id)
        until = (
            self._future(request, "old_key_valid_until")
            if request.HasField("old_key_valid_until")
            else now_us() + DEFAULT_ROTATION_OVERLAP_US
        )
        new = keys.generate_key()
        record = await self._store.rotate_key(
            request.key_id, admin.account_id, new.key_id, new.secret_hash, until
        )
        if record is None:
            raise NotFound(f"no live key {request.key_id!r} in this account", "key_not_found")
        self._auth.invalidate(request.key_id)
        return admin_pb2.CreateKeyResponse(key=key_message(record), api_key=new.plaintext)

    # -- the deployment (operator) -----------------------------------------------------

    @rpc
    async def CreateAccount(
        self, request: admin_pb2.CreateAccountRequest, context: Context
    ) -> admin_pb2.CreateAccountResponse:
        operator = await caller(self._auth, context, "operator")
        if not ACCOUNT_NAME.fullmatch(request.name):
            raise InvalidArgument(
                "`name` must be 1-100 letters, digits, `.`, `_` or `-`", "invalid_name", "name"
            )
        account = await self._store.create_account(request.name, request.suppress_deleted_users)
        if account is None:
            raise AlreadyExists(f"account {request.name!r} exists", "account_exists")
        response = admin_pb2.CreateAccountResponse(account=account_message(account))
        if request.first_key_scopes:
            scopes = _scopes(request.first_key_scopes, operator, "first_key_scopes")
            response.first_key.CopyFrom(await self._create_key(account.id, scopes, "first", None))
        return response

    @rpc
    async def ListAccounts(
        self, request: admin_pb2.ListAccountsRequest, context: Context
    ) -> admin_pb2.ListAccountsResponse:
        await caller(self._auth, context, "operator")
        accounts = await self._store.list_accounts()
        return admin_pb2.ListAccountsResponse(accounts=[account_message(a) for a in accounts])

    @rpc
    async def SetAccountSuspended(
        self, request: admin_pb2.SetAccountSuspendedRequest, context: Context
    ) -> admin_pb2.Account:
        await caller(self._auth, context, "operator")
        return await self._changed(
            request.name, self._store.set_account_suspended(request.name, request.suspended)
        )

    @rpc
    async def SetAccountSuppressDeletedUsers(
        self, request: admin_pb2.SetAccountSuppressDeletedUsersRequest, context: Context
    ) -> admin_pb2.SetAccountSuppressDeletedUsersResponse:
        await caller(self._auth, context, "operator")
        on = request.suppress_deleted_users
        account = await self._changed(
            request.name, self._store.set_account_suppress_deleted_users(request.name, on)
        )
        return admin_pb2.SetAccountSuppressDeletedUsersResponse(account=account)

    async def _changed(self, name: str, change: Awaitable[Account]) -> admin_pb2.Account:
        """The account once `change` is made; NOT_FOUND when there is no such account."""
        try:
            account = await change
        except StoreError:
            raise NotFound(f"no account {name!r}", "account_not_found") from None
        self._auth.invalidate()  # cached key records carry the account's state and settings
        return account_message(account)

    @rpc
    async def SetMaintenance(
        self, request: admin_pb2.SetMaintenanceRequest, context: Context
    ) -> admin_pb2.Maintenance:
        await caller(self._auth, context, "operator")
        await self._maintenance.set(request.on, request.message[:500])
        return self._state()

    @rpc
    async def GetMaintenance(
        self, request: admin_pb2.GetMaintenanceRequest, context: Context
    ) -> admin_pb2.Maintenance:
        await caller(self._auth, context, "operator")
        await self._maintenance.refresh()
        return self._state()

    def _state(self) -> admin_pb2.Maintenance:
        state = self._maintenance.state
        return admin_pb2.Maintenance(
            on=state.on, message=state.message, changed_at=timestamp(state.changed_at_us)
        )
