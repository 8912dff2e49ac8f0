"""Store records → the gRPC messages callers read: pure functions."""

from __future__ import annotations

from typing import Any, Final

import orjson
from google.protobuf import json_format, timestamp_pb2

from inlet.v1 import admin_pb2, events_pb2, profiles_pb2
from service.store.base import Account, KeyRecord, ProfileRecord, StoredRecord, TraitRecord


def timestamp(micros: int | None) -> timestamp_pb2.Timestamp | None:
    if micros is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


def key_message(record: KeyRecord) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        key_id=record.key_id,
        account=record.account_name,
        scopes=list(record.scopes),
        label=record.label,
        created_at=timestamp(record.created_at_us),
        expires_at=timestamp(record.expires_at_us),
        revoked_at=timestamp(record.revoked_at_us),
    )


def account_message(account: Account) -> admin_pb2.Account:
    return admin_pb2.Account(
        name=account.name,
        suspended=account.suspended,
        created_at=timestamp(account.created_at_us),
        suppress_deleted_users=account.suppress_deleted_users,
    )


def stored_event(record: StoredRecord) -> events_pb2.StoredEvent:
    return events_pb2.StoredEvent(
        sequence=record.seq,
        message_id=record.message_id,
        type=record.type,
        user_id=record.user_id or "",
        anonymous_id=record.anonymous_id or "",
        name=record.name or "",
        group_id=record.group_id or "",
        previous_id=record.previous_id or "",
        timestamp=timestamp(record.timestamp_us),
        received_at=timestamp(record.received_at_us),
        key_id=record.key_id,
        json=record.payload,
        settings_json=record.settings or b"",
    )


#: JSON nesting a TraitValue.value may have: each level costs up to three message levels
#: (Struct, map entry, Value) and protobuf decoders stop at 100, a Profile's own
#: (Profile, GroupMembership, map entry, TraitValue, Value) included.
MAX_VALUE_DEPTH: Final = 30


def _trait(record: TraitRecord) -> profiles_pb2.TraitValue:
    trait = profiles_pb2.TraitValue(
        value_json=record.value.decode(),
        timestamp=timestamp(record.timestamp_us),
        message_id=record.message_id,
    )
    # Stored values are JSON that orjson parsed on the way in, so they parse again.
    parsed = orjson.loads(record.value)
    if _depth(parsed) <= MAX_VALUE_DEPTH:
        json_format.ParseDict(parsed, trait.value)  # the deprecated, lossy form
    return trait


def _depth(value: Any) -> int:
    """How many containers deep `value` nests (a scalar: 0)."""
    deepest, pending = 0, [(value, 0)]
    while pending:  # not recursive: a trait may nest 1,000 levels
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            pending.extend(
                (child, depth) for child in (value.values() if isinstance(value, dict) else value)
            )
    return deepest


def profile_message(id: str, record: ProfileRecord) -> profiles_pb2.Profile:
    return profiles_pb2.Profile(
        id=id,
        linked_ids=record.linked_ids,
        traits={key: _trait(value) for key, value in record.traits.items()},
        groups=[
            profiles_pb2.GroupMembership(
                group_id=group.group_id,
                traits={key: _trait(value) for key, value in group.traits.items()},
                timestamp=timestamp(group.timestamp_us),
            )
            for group in record.groups
        ],
        first_seen=timestamp(record.first_seen_us),
        last_seen=timestamp(record.last_seen_us),
        event_counts=record.event_counts,
    )
