"""Authentication of API keys against the store, with a short-lived cache.

Every event carries a key, so key look-ups are on the hot path: verified records
are cached for `ttl_s` seconds. A revocation made through this process's
AdminService takes effect at once (`invalidate`); one made by another process
(`inlet keys revoke` against the database) within `ttl_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from service import keys
from service.errors import PermissionDenied, Unauthenticated
from service.store import AccountStore, KeyRecord

_MAX_CACHED = 10_000
log = logging.getLogger(__name__)


def _invalid() -> Unauthenticated:
    return Unauthenticated("the API key is not valid", "invalid_api_key")


def bearer_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The API key from gRPC call metadata `authorization: Bearer <key>`, if any."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Authenticator:
    """Resolves API keys to key records and checks scopes and account state."""

    def __init__(
        self, store: AccountStore, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        # Bumped by invalidate(): a look-up that started before a revocation must not
        # put the old record back into the cache when it finishes.
        self._generation = 0
        #: Told of every `invalidate` (the sibling workers of `inlet serve --workers`
        #: forget the key too, service/worker.py).
        self.announce: Callable[[str | None], None] | None = None

    async def authenticate(self, api_key: str | None, scope: str | None) -> KeyRecord:
        """Return the record of a valid, unexpired, unrevoked key that has `scope` (any
        scope when None).

        Raises:
            Unauthenticated: no key, or a key that is unknown, revoked or expired.
            PermissionDenied: the key lacks `scope`, or its account is suspended.
        """
        if not api_key:
            raise Unauthenticated("an API key is required", "missing_api_key")
        parts = keys.split_key(api_key)
        record = None if parts is None else await self._lookup(parts[0])
        if parts is None or record is None or not keys.secret_matches(parts[1], record.secret_hash):
            raise _invalid()
        now_us = time.time_ns() // 1000
        # Revoked and expired look exactly like unknown to the caller (no oracle for
        # which key ids exist); the operator's log says which, by key id only.
        if record.revoked_at_us is not None and record.revoked_at_us <= now_us:
            log.info("refused API key %s: revoked", record.key_id)
            raise _invalid()
        if record.expires_at_us is not None and record.expires_at_us <= now_us:
            log.info("refused API key %s: expired", record.key_id)
            raise _invalid()
        if scope is not None and scope not in record.scopes:
            raise PermissionDenied(f"the API key lacks the `{scope}` scope", "missing_scope")
        if record.account_suspended:
            raise PermissionDenied("the account is suspended", "account_suspended")
        return record

    def invalidate(self, key_id: str | None = None, *, announce: bool = True) -> None:
        """Forget one cached key (or all), e.g. after revoking it; `announce`: tell
        `self.announce` (False for what a sibling announced)."""
        if announce and self.announce is not None:
            self.announce(key_id)
        self._generation += 1
        if key_id is None:
            self._cache.clear()
        else:
            self._cache.pop(key_id, None)

    async def _lookup(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        generation = self._generation
        record = await self._store.get_key(key_id)
        if generation != self._generation:
            return record  # invalidated meanwhile: use it once, do not cache it
        if len(self._cache) >= _MAX_CACHED:
            # Unknown key ids are cached too (so a flood of them stays cheap); the
            # bound keeps such a flood from growing memory.
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record
