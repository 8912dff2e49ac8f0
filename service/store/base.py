"""The store interface and the records it deals in."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple, Protocol, TypeAlias

from service.validation import CanonicalEvent


class StoreError(Exception):
    """Misconfiguration or misuse of the store (bad URL, unknown account): not transient."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    suspended: bool
    created_at_us: int
    #: Segment's "Suppress with Delete": every later event of a deleted user is
    #: suppressed, not only those from before the delete (service/suppression.py).
    suppress_deleted_users: bool = False


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
    #: The account's setting (Account.suppress_deleted_users), cached with the key.
    account_suppresses_deleted_users: bool = False


def rotated_expiry(
    old: KeyRecord | None, account_id: int, until_us: int, now_us: int
) -> int | None:
    """When a key being rotated stops working: `until_us`, or its own earlier expiry.
    None when `old` is not a live key of `account_id` (nothing to rotate)."""
    if (
        old is None
        or old.account_id != account_id
        or old.revoked_at_us is not None
        or (old.expires_at_us is not None and old.expires_at_us <= now_us)
    ):
        return None
    return until_us if old.expires_at_us is None else min(until_us, old.expires_at_us)


class EventWrite(NamedTuple):
    """One validated event to store for an account."""

    account_id: int
    key_id: str
    event: CanonicalEvent
    #: The account suppresses every event of its deleted users (Account's setting).
    suppress_deleted_users: bool = False


class Skipped(enum.Enum):
    SUPPRESSED = "suppressed"


#: write_events' result for an event of a deleted user that is not stored
#: (service/suppression.py).
SUPPRESSED: Final = Skipped.SUPPRESSED
#: Per write: its sequence number, None for a duplicate, or SUPPRESSED.
WriteResult: TypeAlias = int | None | Literal[Skipped.SUPPRESSED]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """An event as stored, with its place in the commit order."""

    seq: int
    message_id: str
    type: str
    user_id: str | None
    anonymous_id: str | None
    name: str | None
    group_id: str | None
    previous_id: str | None
    timestamp_us: int
    received_at_us: int
    key_id: str
    payload: bytes
    settings: bytes | None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """A filtered, ordered slice of one account's events (ListEvents, Subscribe)."""

    account_id: int
    #: Any of these ids as userId or anonymousId (a profile's linked ids); None: all.
    ids: tuple[str, ...] | None = None
    types: tuple[str, ...] = ()
    name: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    newest_first: bool = False
    #: Exclusive cursor: seq > after (oldest first) or seq < after (newest first).
    after: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class TraitRecord:
    value: bytes
    timestamp_us: int
    message_id: str


@dataclass(frozen=True, slots=True)
class GroupRecord:
    group_id: str
    timestamp_us: int
    traits: dict[str, TraitRecord]


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    linked_ids: tuple[str, ...]
    traits: dict[str, TraitRecord]
    groups: tuple[GroupRecord, ...]
    first_seen_us: int | None
    last_seen_us: int | None
    event_counts: dict[str, int] = field(default_factory=dict)


class CommitSignal:
    """Wakes subscribers when events are committed. Never blocks the writer.

    Take `current()` *before* reading, then `wait(it)` if there was nothing new: a
    commit in between has already set it, so no wake-up is lost.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        #: Called on every `publish`: `inlet serve --workers` tells the sibling processes
        #: (service/worker.py), whose streams this process's commits cannot wake.
        self.relay: Callable[[], None] | None = None

    def current(self) -> asyncio.Event:
        return self._event

    def publish(self) -> None:
        """Events were committed here."""
        self.wake()
        if self.relay is not None:
            self.relay()

    def wake(self) -> None:
        """Wake the waiting streams (a commit here, or another process's)."""
        event, self._event = self._event, asyncio.Event()
        event.set()


# The store's interface in the parts its users need: the ingest path, the feed and
# retention need events; the ProfileService profiles; authentication and the
# AdminService accounts and keys; maintenance mode the switches. `Store` is all of
# them with the lifecycle, what an implementation provides.


class EventStore(Protocol):
    """Stored events: writing, the ordered feed, retention. Every write is durable when
    it returns."""

    #: Published after every commit that stored events.
    commits: CommitSignal

    #: How long a caught-up Subscribe stream may wait for `commits` before re-reading:
    #: short where other processes' commits cannot signal (SQLite), long where they do.
    feed_poll_s: float

    async def write_events(self, writes: Sequence[EventWrite]) -> list[WriteResult]:
        """Store events in one transaction, skipping (account, messageId) pairs already
        stored and events of deleted users that their deletion covers (suppression.py).
        Returns, per write, its sequence number, None for a duplicate, or SUPPRESSED.

        A `delete` erases what is stored of the ids linked to its user and records, with
        the delete's time, each of those ids (the `deleted_ids` table), so that the
        events it covered stay out when Segment delivers them again.

        Raises:
            StoreUnavailable: nothing was written; the caller may retry.
        """
        ...

    async def list_events(self, query: EventQuery) -> list[StoredRecord]: ...

    async def latest_sequence(self) -> int:
        """The highest sequence committed so far (0 when there is none)."""
        ...

    async def count_events(self, account_id: int) -> int: ...

    async def get_event_payload(self, account_id: int, message_id: str) -> bytes | None: ...

    async def prune_events(self, received_before_us: int, limit: int) -> int:
        """Delete, among the `limit` oldest stored events (by sequence), those received
        before `received_before_us`, in one transaction; return how many. Profiles
        (traits, links, memberships) and deletion records stay.

        Raises:
            StoreUnavailable: nothing was deleted; try again later.
        """
        ...


class ProfileStore(Protocol):
    """Per-user profiles, built as events are stored."""

    async def linked_ids(self, account_id: int, id: str) -> tuple[str, ...]:
        """`id` and every id linked to it, sorted."""
        ...

    async def get_profile(self, account_id: int, id: str) -> ProfileRecord | None:
        """The merged profile of `id`'s linked ids; None when nothing is known of them."""
        ...


class AccountStore(Protocol):
    """Accounts and their API keys."""

    async def ensure_account(self, name: str) -> Account: ...

    async def create_account(
        self, name: str, suppress_deleted_users: bool = False
    ) -> Account | None:
        """A new account; None if one of that name exists (atomic: of two concurrent
        calls with one name, exactly one gets the account)."""
        ...

    async def get_account(self, name: str) -> Account | None: ...

    async def list_accounts(self) -> list[Account]: ...

    async def set_account_suspended(self, name: str, suspended: bool) -> Account: ...

    async def set_account_suppress_deleted_users(self, name: str, on: bool) -> Account:
        """Raises StoreError when there is no such account."""
        ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

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

    async def rotate_key(
        self,
        key_id: str,
        account_id: int,
        new_key_id: str,
        new_secret_hash: bytes,
        old_valid_until_us: int,
    ) -> KeyRecord | None:
        """Create a key like `key_id` (scopes, label, expiry) and make the old one expire
        at `old_valid_until_us` (or its own earlier expiry), in one transaction.
        None if there is no such live key in the account."""
        ...


class SwitchStore(Protocol):
    """Deployment-wide settings (maintenance mode)."""

    async def get_switch(self, name: str) -> tuple[str, int] | None:
        """(value, changed at µs), or None if never set."""
        ...

    async def set_switch(self, name: str, value: str) -> int:
        """Set it; returns the change time (µs)."""
        ...


class Store(EventStore, ProfileStore, AccountStore, SwitchStore, Protocol):
    """What the core needs from a database: every part, and its lifecycle."""

    async def open(self, *, migrate: bool = True) -> None:
        """Connect; with `migrate`, first bring the schema up to date (`migrate()`)."""
        ...

    async def migrate(self) -> tuple[int, int]:
        """Apply the schema migrations this database lacks, in order, each once, safe
        while other processes do the same. Returns (version before, version after)."""
        ...

    async def close(self) -> None: ...
