"""What each event changes in the profiles: pure functions, no I/O.

The store turns a `Projection` into writes in the same transaction that stores
the event, so a profile never shows an event that is not stored, nor misses one
that is. The rules (Segment Spec, and docs/design.md "From the socket to the disk"):

* identify merges its traits into the user's traits; per trait, the value from
  the event with the newest `timestamp` wins (Segment retries for hours and does
  not keep order, so arrival order means nothing).
* Any event carrying both `userId` and `anonymousId` links the two ids; alias
  links `previousId` to `userId`. A profile is everything reachable through links,
  except that from a device (anonymousId) the walk goes on to its users only when it
  started there: one shared browser does not merge two users (Segment's Unify keeps
  one userId per profile for the same reason).
* group records the membership of the sender and the group's traits (same rule).
* track, page and screen add nothing beyond the stored event: history is the
  events table itself, indexed by user.
* delete erases the user's profile, links, memberships and events; the delete
  event itself stays as the record that the deletion happened (in its user's
  history, counted in no profile), and the store records each erased id so that
  late redeliveries of what it covered stay out (suppression.py).

Traits are kept as a whole value per top-level key (`address` is one value), as the
JSON the customer sent: `5` stays `5` (never `5.0`), `1.50` stays `1.50`, and an id of
19 or 30 digits keeps every one. Reserved traits are stored under their Spec name
whatever casing they came in, so `first_name` and `firstName` are one trait; custom
traits keep the key as sent.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from service.json_text import object_members
from service.validation import CanonicalEvent, normalise_name, spec_fields

#: Segment Spec reserved traits: identify (spec-identify.md) and group (spec-group.md).
RESERVED_TRAITS: Final = (
    "address",
    "age",
    "avatar",
    "birthday",
    "company",
    "createdAt",
    "description",
    "email",
    "employees",
    "firstName",
    "gender",
    "id",
    "industry",
    "lastName",
    "name",
    "phone",
    "plan",
    "title",
    "username",
    "website",
)
_RESERVED_BY_NORMAL: Final = {normalise_name(t): t for t in RESERVED_TRAITS}

#: Link kinds (identity_links.kind, the kind of `other` seen from `id`). An alias says two
#: ids are one person: followed both ways. An event with a userId and an anonymousId links
#: the user to a device (DEVICE) and the device to its user (USER_OF_DEVICE); a profile
#: walk follows USER_OF_DEVICE only from the id it starts at, so two users who shared a
#: browser are not merged into one profile, and deleting one never erases the other.
ALIAS: Final = "alias"
DEVICE: Final = "anonymous"
USER_OF_DEVICE: Final = "user"

#: Subject kinds in the traits table.
USER: Final = "user"
GROUP: Final = "group"

#: Nesting orjson writes back with room to spare (it stops at 254 levels).
_WRITABLE_DEPTH: Final = 200


def trait_key(key: str) -> str:
    """The key a trait is stored under: the Spec name for reserved traits, else as sent."""
    return _RESERVED_BY_NORMAL.get(normalise_name(key), key)


class TraitWrite(NamedTuple):
    subject_kind: str
    subject_id: str
    key: str
    #: The value as JSON.
    value: bytes


class Projection(NamedTuple):
    """The profile changes one stored event makes."""

    #: Edges to store: (id, other, kind of `other` as seen from `id`). See LINK_KINDS.
    links: tuple[tuple[str, str, str], ...] = ()
    traits: tuple[TraitWrite, ...] = ()
    #: (member id, group id).
    membership: tuple[str, str] | None = None
    #: The userId whose profile to erase.
    erase: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.links or self.traits or self.membership or self.erase)


NOTHING: Final = Projection()


def project(event: CanonicalEvent) -> Projection:
    """The profile changes `event` makes (NOTHING for most track/page/screen events)."""
    if event.type == "delete":
        return Projection(erase=event.user_id)
    links: list[tuple[str, str, str]] = []
    user, anonymous = event.user_id, event.anonymous_id
    if user is not None and anonymous is not None and user != anonymous:
        links += ((user, anonymous, DEVICE), (anonymous, user, USER_OF_DEVICE))
    if event.type == "alias":
        assert event.previous_id is not None and event.user_id is not None  # validated
        if event.previous_id != event.user_id:
            links += (
                (event.user_id, event.previous_id, ALIAS),
                (event.previous_id, event.user_id, ALIAS),
            )
    subject = event.user_id if event.user_id is not None else event.anonymous_id
    if event.type == "identify" and subject is not None:
        return Projection(links=tuple(links), traits=_traits(USER, subject, event))
    if event.type == "group" and subject is not None:
        assert event.group_id is not None  # validated
        return Projection(
            links=tuple(links),
            traits=_traits(GROUP, event.group_id, event),
            membership=(subject, event.group_id),
        )
    return Projection(links=tuple(links)) if links else NOTHING


def _traits(kind: str, subject: str, event: CanonicalEvent) -> tuple[TraitWrite, ...]:
    if not event.traits:
        return ()
    texts: list[tuple[str, bytes]]
    if _written_back_as_sent(event.traits, b"-0" in event.raw):
        texts = [(key, orjson.dumps(value)) for key, value in event.traits.items()]
    else:
        texts = _texts_as_sent(event.raw)
    # Two spellings of one reserved trait in one call (`email`, `Email`): the last wins,
    # as it would in the customer's own JSON object.
    merged = {trait_key(key): text for key, text in texts}
    return tuple(TraitWrite(kind, subject, key, text) for key, text in merged.items())


def _written_back_as_sent(traits: dict[str, Any], negative_zero: bool) -> bool:
    """Whether orjson writes the parsed traits back with every value as sent: they hold
    no float (whose text orjson may change: `1.50`, `1E20`, an integer beyond 64 bits),
    no 0 that may have been `-0`, and no nesting deeper than orjson writes."""
    pending = [(value, 1) for value in traits.values()]
    while pending:  # not recursive: traits may nest 1,000 levels
        value, depth = pending.pop()
        kind = value.__class__
        if kind is float or (kind is int and negative_zero and value == 0):
            return False
        if kind is dict or kind is list:
            if depth > _WRITABLE_DEPTH:
                return False
            children = value.values() if kind is dict else value
            pending.extend((child, depth + 1) for child in children)
    return True


def _texts_as_sent(raw: bytes) -> list[tuple[str, bytes]]:
    """Each trait's key and JSON text, cut out of the event as written.

    The same `traits` validation found: spec_fields on the top-level members picks it, a
    repeated key counting once with its last value, as in the parsed event."""
    text = raw.decode()
    top = {key: (start, end) for key, start, end in object_members(text)}
    start, _ = spec_fields(top)["traits"]
    return [(key, text[a:b].encode()) for key, a, b in object_members(text, start)]
