"""Which events of deleted users stay out: pure functions, no I/O.

A `delete` erases what is stored of its user and of every id linked to them (projections.py),
and the store records each of those ids with the delete's time (`deleted_ids`). Segment
retries for up to four hours and replays older data, and a delete usually follows the
user's last activity closely: without a record, a late redelivery of an event the
deletion covered would be stored as new and bring the user back. So an event whose
subject (userId, else anonymousId; an alias's previousId too) is a deleted id is
*suppressed*, answered 200 (Segment must not retry it) and not stored, when

* it happened before the delete: its time is earlier than the delete's; or
* its account suppresses deleted users (Segment's "Suppress with Delete"), whatever
  its time.

Otherwise it is a returning user's event, and stored. A `delete` itself is never
suppressed.

The time compared is the one Segment stamps, `receivedAt`, else `timestamp` (else, for
an event with neither, Inlet's receive time). `receivedAt` is Segment's own clock, the
same for the event and the delete, and says what Segment had received when it passed the
deletion on: exactly what the deletion covers. `timestamp` is the device's clock
(corrected by Segment with `sentAt`, or set freely by a server library or a historical
import), so on its own it can put a pre-delete event after the delete (a clock ahead)
or a returning user's event before it (an app flushing events queued offline); it is
used only when there is no `receivedAt` (the SDK routes, gRPC callers), and it stays
the same when the event is sent again, which Inlet's own receive time would not.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.validation import CanonicalEvent

#: IngestResult.reason of a suppressed event.
REASON = "user_deleted"


def covered_ids(event: CanonicalEvent) -> tuple[str, ...]:
    """The ids whose deletion covers `event`: its subject (the profile it belongs to) and
    an alias's previousId (the same person); none for a delete, which is never suppressed.

    An anonymousId beside a userId is not one: a device one deleted user shared with
    another user still sends the other user's events."""
    if event.type == "delete":
        return ()
    subject = event.user_id if event.user_id is not None else event.anonymous_id
    if event.type == "alias" and event.previous_id is not None:
        return (event.previous_id,) if subject is None else (subject, event.previous_id)
    return () if subject is None else (subject,)


def is_suppressed(
    event: CanonicalEvent, deleted_at_us: Mapping[str, int], suppress_all: bool
) -> bool:
    """Whether `event` stays out, given when each of its account's deleted ids was last
    deleted (`deleted_at_us`, holding at least the ids of covered_ids(event) that were)."""
    times = [deleted_at_us[id] for id in covered_ids(event) if id in deleted_at_us]
    if not times:
        return False
    return suppress_all or event.event_time_us < max(times)
