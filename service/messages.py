"""Store records → the gRPC messages callers read: pure functions."""

from __future__ import annotations

import orjson
from google.protobuf import json_format, struct_pb2, timestamp_pb2

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


def _trait(record: TraitRecord) -> profiles_pb2.TraitValue:
    value = struct_pb2.Value()
    # Stored values came from JSON (orjson), so they always convert back.
    json_format.ParseDict(orjson.loads(record.value), value)
    return profiles_pb2.TraitValue(
        value=value, timestamp=timestamp(record.timestamp_us), message_id=record.message_id
    )


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
