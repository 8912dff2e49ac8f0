"""Realistic Segment events for load, in four mixes (MIXES):

* `bench`: all seven types, ~30 % track with product arrays, ~1,000 fixed users;
* `profiles`: the shape of real traffic that builds profiles: per 20 requests 12 track,
  2 page, 3 identify, 1 alias, 1 group and 1 delete, each for one of `users` users
  (500 by default) picked at random per request;
* `profiles-no-deletes`: the same with a track where the delete was (13 track), so the
  two differ only by the 5 % deletes;
* `track`: one track event (~1 KB, one product), the plainest load.

Each template has the placeholder `__MID__` where the messageId goes and, in the
`profiles` mix, `__USER__` where the user's number goes, so load generators (the wrk
Lua script, the Python client) only splice in strings.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any, Final

import orjson

PLACEHOLDER: Final = "__MID__"
USER_PLACEHOLDER: Final = "__USER__"

#: What Segment sends in `X-Segment-Settings` with every event: the destination's settings
#: as base64 JSON (this is the partner docs' example).
SETTINGS_HEADER: Final = base64.b64encode(
    orjson.dumps({"customSettingOne": "custom setting value"})
).decode()

_CONTEXT = {
    "ip": "67.160.210.48",
    "library": {"name": "analytics.js", "version": "3.8.2"},
    "page": {
        "path": "/checkout",
        "referrer": "https://example.com/cart",
        "title": "Checkout",
        "url": "https://example.com/checkout",
    },
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_5) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/75.0.3770.100 Safari/537.36",
    "locale": "en-US",
    "timezone": "Europe/Amsterdam",
}


def _common(kind: str, n: int) -> dict[str, Any]:
    return {
        "type": kind,
        "messageId": PLACEHOLDER,
        "userId": f"user-{n % 997}",
        "anonymousId": f"3d316d2c-26e8-451f-91be-{n:012d}",
        "timestamp": "2026-11-26T08:19:18.595Z",
        "sentAt": "2026-11-26T08:19:18.601Z",
        "receivedAt": "2026-11-26T08:19:19.012Z",
        "channel": "client",
        "context": _CONTEXT,
        "integrations": {},
        "version": 2,
    }


def _products(n: int) -> list[dict[str, Any]]:
    return [
        {
            "product_id": f"sku-{n}-{i}",
            "sku": f"45790-{i}",
            "name": f"Monopoly edition {i}",
            "price": 19.99 + i,
            "quantity": 1 + i % 3,
            "category": "Games",
            "url": f"https://example.com/p/{i}",
            "image_url": f"https://example.com/p/{i}.jpg",
        }
        for i in range(1 + n % 3)
    ]


def _track(n: int) -> dict[str, Any]:
    event = _common("track", n)
    event.update(
        event="Order Completed",
        properties={
            "order_id": f"50314b8e9bcf00000000000{n}",
            "total": 27.5,
            "revenue": 25.0,
            "currency": "USD",
            "products": _products(n),
        },
    )
    return event


def templates() -> list[bytes]:
    """20 event bodies in the mix the benchmark sends (6 of them track)."""
    out: list[dict[str, Any]] = []
    out.extend(_track(n) for n in range(6))
    for n in range(4):
        event = _common("identify", n)
        event["traits"] = {"email": f"user{n}@example.com", "firstName": "Peter", "plan": "pro"}
        out.append(event)
    for n in range(4):
        event = _common("page", n)
        event.update(name="Checkout", properties={"path": "/checkout", "title": "Checkout"})
        out.append(event)
    for n in range(2):
        event = _common("screen", n)
        event.update(name="Home", properties={"Feed Type": "private"})
        out.append(event)
    for n in range(2):
        event = _common("group", n)
        event.update(groupId=f"group-{n}", traits={"name": "Initech", "employees": 329})
        out.append(event)
    alias = _common("alias", 0)
    alias["previousId"] = "39239-239239-239239-23923"
    out.append(alias)
    delete = {
        "type": "delete",
        "messageId": PLACEHOLDER,
        "userId": "user-gone",
        "context": None,
        "integrations": None,
    }
    out.append(delete)
    return [orjson.dumps(event) for event in out]


def profile_templates(deletes: bool = True) -> list[bytes]:
    """The `profiles` mix: 20 bodies, per 20 requests 12 track, 2 page, 3 identify, 1 alias,
    1 group, 1 delete, spread out; the user's number is `__USER__`. Without `deletes`,
    the delete's slot holds a track."""
    user = USER_PLACEHOLDER

    def of(kind: str, n: int, **fields: Any) -> dict[str, Any]:
        event = _common(kind, n)
        event.update(userId=f"user-{user}", anonymousId=f"anon-{user}", **fields)
        return event

    identify = {"email": f"user{user}@example.com", "firstName": "Peter", "plan": "pro"}
    slots = {
        1: of("identify", 1, traits=identify),
        3: of("page", 3, name="Checkout", properties={"path": "/checkout"}),
        6: of("identify", 6, traits={**identify, "plan": "enterprise"}),
        8: of("alias", 8, previousId=f"anon-{user}"),
        11: of("group", 11, groupId=f"group-{user}", traits={"name": "Initech", "employees": 329}),
        13: of("page", 13, name="Cart", properties={"path": "/cart"}),
        15: of("identify", 15, traits={"lastName": "Gibbons", "age": 41}),
    }
    if deletes:
        # As Segment sends one (reference sample delete_partner_spec.json): with its own
        # timestamps, the same as the other events', so the user's later events in the
        # load are a returning user's, stored, not events from before the deletion.
        common = _common("delete", 18)
        slots[18] = {
            "type": "delete",
            "messageId": PLACEHOLDER,
            "userId": f"user-{user}",
            "context": None,
            "integrations": None,
            **{k: common[k] for k in ("channel", "timestamp", "sentAt", "receivedAt")},
        }
    ids = {"userId": f"user-{user}", "anonymousId": f"anon-{user}"}
    return [orjson.dumps(slots.get(n) or {**_track(n), **ids}) for n in range(20)]


def track_templates() -> list[bytes]:
    """The `track` mix: one track event, always the same but for its messageId."""
    return [orjson.dumps(_track(0))]


#: name -> (its templates, how many users `__USER__` ranges over; 0: no placeholder).
MIXES: Final[dict[str, tuple[Callable[[], list[bytes]], int]]] = {
    "bench": (templates, 0),
    "profiles": (profile_templates, 500),
    "profiles-no-deletes": (lambda: profile_templates(deletes=False), 500),
    "track": (track_templates, 0),
}

#: The track event bench/grpc_load.py sends to IngestBatch (and bench/pg_ceiling.py inserts
#: as Inlet stores it): `__MID__` is where the messageId goes.
GRPC_TRACK: Final = orjson.dumps(
    {
        "type": "track",
        "messageId": PLACEHOLDER,
        "userId": "user-1",
        "event": "Order Completed",
        "timestamp": "2026-11-26T08:19:18.595Z",
        "context": {"library": {"name": "bench"}},
        "properties": {
            "order_id": "50314b8e9bcf000000000000",
            "revenue": 25.0,
            "currency": "USD",
            "products": [{"product_id": "507f1f77bcf86cd799439011", "price": 19.0}],
        },
    }
)


class EventSource:
    """Bodies with unique messageIds, plus `redeliver` of them re-sent (Segment retries)."""

    def __init__(
        self,
        prefix: str,
        redeliver: float = 0.03,
        seed: int = 1,
        mix: str = "bench",
        users: int | None = None,
    ) -> None:
        make, default_users = MIXES[mix]
        self._templates = make()
        self._users = default_users if users is None else users
        self._prefix = prefix
        self._redeliver = redeliver
        self._random = random.Random(seed)
        self._count = 0
        self._recent: list[bytes] = []

    def next(self) -> bytes:
        if self._recent and self._random.random() < self._redeliver:
            return self._random.choice(self._recent)
        self._count += 1
        template = self._templates[self._count % len(self._templates)]
        # Random, as Segment's UUIDs are: inserts land all over the messageId index.
        message_id = f"{self._prefix}-{self._random.getrandbits(96):024x}-{self._count}"
        body = template.replace(PLACEHOLDER.encode(), message_id.encode())
        if self._users:
            user = str(self._random.randrange(self._users)).encode()
            body = body.replace(USER_PLACEHOLDER.encode(), user)
        if len(self._recent) < 1000:
            self._recent.append(body)
        else:
            self._recent[self._count % 1000] = body
        return body
