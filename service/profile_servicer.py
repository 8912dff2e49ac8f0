"""ProfileService: the merged profile of a user (scope `read`)."""

from __future__ import annotations

from inlet.v1 import profiles_pb2, profiles_pb2_grpc
from service.auth import Authenticator
from service.errors import InvalidArgument, NotFound
from service.messages import profile_message
from service.rpc import Context, caller, rpc
from service.store import ProfileStore


class ProfileServicer(profiles_pb2_grpc.ProfileServiceServicer):
    def __init__(self, store: ProfileStore, auth: Authenticator) -> None:
        self._store = store
        self._auth = auth

    @rpc
    async def GetProfile(
        self, request: profiles_pb2.GetProfileRequest, context: Context
    ) -> profiles_pb2.Profile:
        key = await caller(self._auth, context, "read")
        if not request.id:
            raise InvalidArgument("`id` is required: a userId or anonymousId", "missing_id", "id")
        record = await self._store.get_profile(key.account_id, request.id)
        if record is None:
            # Same answer for "never seen" and "erased": nothing is known either way.
            raise NotFound(f"no profile for {request.id[:100]!r} in this account", "no_profile")
        return profile_message(request.id, record)
