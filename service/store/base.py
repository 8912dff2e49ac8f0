"""The store interface and the records it deals in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.validation import CanonicalEvent


class StoreError(Exception):
    """Misconfiguration or misuse of the store (bad URL, unknown account): not transient."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    suspended: bool
    created_at_us: int


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    account_id: int
    account_name: str
    account_suspended: bool
    scopes: tuple[str, ...]
    label: str
    secret_hash: bytes
    created_at_us: int
    expires_at_us: int | None
    revoked_at_us: int | None


@dataclass(frozen=True, slots=True)
class EventWrite:
    """One validated event to store for an account."""

    account_id: int
    key_id: str
    event: CanonicalEvent


class Store(Protocol):
    """What the core needs from a database. Every write is durable when it returns."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write_events(self, writes: Sequence[EventWrite]) -> list[int | None]:
        """Store events in one transaction, skipping (account, messageId) pairs already
        stored. Returns, per write, its sequence number, or None for a duplicate.

        Raises:
            StoreUnavailable: nothing was written; the caller may retry.
        """
        ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def ensure_account(self, name: str) -> Account: ...

    async def get_account(self, name: str) -> Account | None: ...

    async def set_account_suspended(self, name: str, suspended: bool) -> Account: ...

    async def create_key(
        self,
        account_id: int,
        key_id: str,
        secret_hash: bytes,
        scopes: Sequence[str],
        label: str = "",
        expires_at_us: int | None = None,
    ) -> KeyRecord: ...

    async def list_keys(
        self, account_id: int | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]: ...

    async def revoke_key(self, key_id: str, account_id: int | None = None) -> KeyRecord | None:
        """Revoke a key (of `account_id`, when given); None if there is no such key."""
        ...

    async def count_events(self, account_id: int) -> int: ...

    async def get_event_payload(self, account_id: int, message_id: str) -> bytes | None: ...
