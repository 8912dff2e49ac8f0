"""Segment's Tracking API syntax, for apps using Segment's SDKs: pure parsing and merging.

The SDK routes (`POST /v1/track`, ..., `/v1/batch`, `/v1/import`) take what Segment's
client libraries send to `api.segment.io` (README, "Apps using Segment's SDKs"):

* analytics-python ≥ 2.3 posts `{"batch": [...], "sentAt", "writeKey"}` to `/v1/batch`,
  the write key in the body (2.4 also as Basic), optionally gzipped;
* @segment/analytics-node posts the same shape with `Authorization: Basic base64(key:)`;
* analytics.js posts single events to `/v1/t|i|p|s|g|a` (the first letter of the type)
  and batches to `/v1/b`, as `text/plain`, with `writeKey` in the body and (since 1.84)
  as Basic too, so browsers preflight each path; analytics-android posts gzipped,
  chunked `/v1/import`.

The bridge splits a request into events and forwards each as its own IngestItem, so the
core validates each one alone (a bad event never sinks the good ones); the core's verdicts
are turned into one HTTP answer by `verdict`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from http_bridge import sdk_text
from http_bridge.errors import BadRequest, Unauthorized, UnsupportedMediaType
from http_bridge.segment import api_key_from_authorization
from http_bridge.status_map import http_status_for
from inlet.v1 import events_pb2
from service.handoff import Verdict

#: Single-event routes and the `type` each one fixes, as Segment's Tracking API does
#: (a `type` in the body is overridden).
SINGLE_ROUTES: Final = {
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/alias": "alias",
    # analytics.js posts to `{apiHost}/{first letter of the type}`, as Segment's API allows.
    "/v1/t": "track",
    "/v1/i": "identify",
    "/v1/p": "page",
    "/v1/s": "screen",
    "/v1/g": "group",
    "/v1/a": "alias",
}
#: `/v1/import` is the legacy name of `/v1/batch` (analytics-android still posts there);
#: `/v1/b` is analytics.js's (its batching delivery).
BATCH_ROUTES: Final = ("/v1/batch", "/v1/import", "/v1/b")

#: analytics.js sends JSON as `text/plain` (which, before 1.84 added `Authorization`,
#: spared browsers the CORS preflight).
_SDK_MEDIA_TYPE: Final = re.compile(r"^(?:application/(?:[\w.+-]+\+)?json|text/plain)$")

#: Outcome names in the per-event results.
STORED: Final = "stored"
DUPLICATE: Final = "duplicate"
#: Of a deleted user, not stored for good (service/suppression.py): a success to the SDK.
SUPPRESSED: Final = "suppressed"
REJECTED: Final = "rejected"

#: Which transient status a request gets when its events failed for several transient
#: reasons: 503 (our trouble) before 429 (the key's rate) before 500 (a bug). All three
#: make the SDKs retry the whole request.
_RETRY_PRIORITY: Final = (503, 429, 500)


def check_sdk_media_type(content_type: str | None) -> None:
    """Accept JSON media types, `text/plain` (analytics.js) or none.

    Raises:
        UnsupportedMediaType: anything else.
    """
    if not content_type:
        return
    media_type = content_type.partition(";")[0].strip().lower()
    if not _SDK_MEDIA_TYPE.match(media_type):
        shown = media_type[:60].encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise UnsupportedMediaType(
            f"the body must be JSON (application/json or text/plain), not {shown or 'empty'}",
            "unsupported_media_type",
        )


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        BadRequest: empty, not JSON (or not UTF-8, or nested beyond orjson's 1,024
            levels), not an object.
    """
    if not raw.strip():
        raise BadRequest("the body is empty: expected a JSON object", "invalid_json")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequest(
            f"the body must be a JSON object, not {type(value).__name__}", "not_an_object"
        )
    return value


def write_key_from(authorization: str | None, body: dict[str, Any]) -> str:
    """The write key (an Inlet API key): the Basic user name, else `writeKey` in the body.

    analytics-python 2.3 sends the key only in the body; with OAuth the SDKs send
    `Bearer <token>` plus `writeKey` in the body. Inlet does no OAuth: a Bearer token
    is ignored and the body's key (itself the secret) is what counts. When both a
    Basic key and a body key are sent (analytics-python 2.4 sends both, equal), Basic
    wins, as on the webhook.

    Raises:
        BadRequest: `writeKey` is not a string.
        Unauthorized: no key anywhere, or a Basic header that does not decode.
    """
    key = body.get("writeKey")
    if key is not None and not isinstance(key, str):
        raise BadRequest("`writeKey` must be a string", "wrong_type")
    scheme = (authorization or "").strip().partition(" ")[0].lower()
    if scheme == "basic":
        return api_key_from_authorization(authorization)
    if key:
        return key
    if scheme:
        raise Unauthorized("send the write key as the Basic user name or as `writeKey` in the body")
    raise Unauthorized(
        "no write key: send `Authorization: Basic base64(<api key>:)` or `writeKey` in the body",
        "missing_authorization",
    )


def events_from(body: dict[str, Any], route: str, max_events: int) -> list[Any]:
    """The events of a request, not yet checked one by one.

    A single-event route's body is the event, its `type` fixed by the route. A batch
    route's body holds them in `batch`.

    Raises:
        BadRequest: a batch body without a non-empty `batch` array, or with more than
            `max_events` events (Segment's limit is 2,500; none of them is stored), or
            with a batch-level `context`, `integrations` or `sentAt` of the wrong type.
    """
    if route in SINGLE_ROUTES:
        return [{**body, "type": SINGLE_ROUTES[route]}]
    batch = body.get("batch")
    if batch is None:
        raise BadRequest("the body has no `batch` array of events", "missing_field")
    if not isinstance(batch, list):
        raise BadRequest("`batch` must be an array of events", "wrong_type")
    if not batch:
        # Nothing to store; and a 200 here would answer without checking the key.
        raise BadRequest("`batch` is empty", "empty_batch")
    if len(batch) > max_events:
        raise BadRequest(
            f"a batch may hold at most {max_events} events, not {len(batch)}", "too_many_events"
        )
    # Batch-level fields go into every event: a wrong one would fail them all.
    for field in ("context", "integrations"):
        if body.get(field) is not None and not isinstance(body[field], dict):
            raise BadRequest(f"the batch's `{field}` must be an object", "wrong_type")
    sent_at = body.get("sentAt")
    if sent_at is not None and (
        isinstance(sent_at, bool) or not isinstance(sent_at, str | int | float)
    ):
        raise BadRequest("the batch's `sentAt` must be a date string", "wrong_type")
    return batch


def deep_merge(base: dict[str, Any], over: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """`base` updated with `over`, objects merged key by key; `over` wins on conflicts."""
    merged = dict(base)
    for key, value in over.items():
        inner = merged.get(key)
        if depth < sdk_text.MERGE_DEPTH and isinstance(value, dict) and isinstance(inner, dict):
            merged[key] = deep_merge(inner, value, depth + 1)
        else:
            merged[key] = value
    return merged


def with_batch_defaults(event: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The event as stored: batch-level `context`, `integrations` and `sentAt` merged in.

    Segment's Tracking API merges a batch's `context` and `integrations` into each
    event; the event's own values win. The batch's `sentAt` (analytics-python and
    analytics-node set it only there) goes to events without one, so the stored event
    keeps the client clock that `timestamp` corrections need. `writeKey` is dropped:
    it is the API key, and keys are never stored in clear.
    """
    merged = dict(event)
    merged.pop("writeKey", None)
    for field in ("context", "integrations"):
        shared = body.get(field)
        if not isinstance(shared, dict) or not shared:
            continue
        own = merged.get(field)
        if own is None:
            merged[field] = shared
        elif isinstance(own, dict):
            merged[field] = deep_merge(shared, own)
        # anything else is the event's own mistake: left for the core to reject
    sent_at = body.get("sentAt")
    if sent_at is not None and merged.get("sentAt") is None:
        merged["sentAt"] = sent_at
    return merged


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What happened to one event of a request."""

    status: int
    """200 when stored, already stored or suppressed; else the status it would get alone."""
    outcome: str
    message_id: str | None = None
    code: str | None = None
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"status": self.status, "outcome": self.outcome}
        if self.message_id is not None:
            entry["messageId"] = self.message_id
        if self.code is not None:
            entry["code"] = self.code
            entry["message"] = self.message
        return entry


def message_id_of(event: Any) -> str | None:
    """The event's `messageId` as sent, for matching results to events."""
    value = event.get("messageId") if isinstance(event, dict) else None
    return str(value) if isinstance(value, str | int) and value != "" else None


def encode_events(
    text: str, body: dict[str, Any], route: str, events: list[Any], max_bytes: int
) -> list[bytes | ItemOutcome]:
    """Each event of a request (`events`, from `events_from`) as JSON for the core, with
    the batch's defaults (`with_batch_defaults`), or the reason the bridge refuses it
    alone. `text` is the body as received, `body` it parsed.

    Writing the parsed event again is the fast way, and exact when every number of the
    body comes back as written; otherwise (`-0`, `1.50`, an integer beyond 64 bits...),
    or past the 254 levels of nesting orjson writes, the event is cut out of `text` and
    merged as text (sdk_text.py), much slower, so that it is stored
    as sent, as the webhook stores it.
    """
    route_type = SINGLE_ROUTES.get(route)
    exact = sdk_text.numbers_round_trip(text)
    texts: list[str] | None = None
    defaults: dict[str, str] = {}
    encoded: list[bytes | ItemOutcome] = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            encoded.append(
                ItemOutcome(
                    400,
                    REJECTED,
                    None,
                    "not_an_object",
                    f"an event must be a JSON object, not {type(event).__name__}",
                )
            )
            continue
        raw = None
        if exact:
            with contextlib.suppress(orjson.JSONEncodeError):  # nested too deeply
                raw = orjson.dumps(with_batch_defaults(event, body))
        if raw is None:
            if texts is None:
                texts = sdk_text.event_texts(text, route_type is not None)
                defaults = sdk_text.batch_defaults(text, body, route_type is not None)
            raw = sdk_text.with_batch_defaults(texts[index], defaults, route_type).encode()
        if len(raw) > max_bytes:
            encoded.append(
                ItemOutcome(
                    413,
                    REJECTED,
                    message_id_of(event),
                    "event_too_large",
                    f"the event is {len(raw)} bytes; the limit is {max_bytes}",
                )
            )
        else:
            encoded.append(raw)
    return encoded


def outcome_of(result: Verdict, message_id: str | None = None) -> ItemOutcome:
    """The core's verdict on one event, in HTTP terms (status_map.py's table).

    `message_id` (the one sent) names a rejected event, for which the core has none.
    """
    if result.outcome == events_pb2.OUTCOME_STORED:
        return ItemOutcome(200, STORED, result.message_id)
    if result.outcome == events_pb2.OUTCOME_DUPLICATE:
        return ItemOutcome(200, DUPLICATE, result.message_id)
    if result.outcome == events_pb2.OUTCOME_SUPPRESSED:
        return ItemOutcome(200, SUPPRESSED, result.message_id)
    status = http_status_for(result.code)
    if result.outcome != events_pb2.OUTCOME_REJECTED or status in (200, 500):
        return ItemOutcome(500, REJECTED, message_id, "internal", "internal error")
    return ItemOutcome(
        status, REJECTED, result.message_id or message_id, result.reason, result.message
    )


def verdict(outcomes: Sequence[ItemOutcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body for a request whose events had these outcomes.

    The SDKs retry a whole request on 5xx and 429 and drop it on other 4xx; a retry
    re-sends the stored events too, which is harmless (deduplicated by messageId, and
    answered as duplicates). So:

    * any event failed for a transient reason (store or core unavailable, overload,
      rate limit, a bug) → that status (503, 429 or 500), so the SDK retries the batch
      and nothing transient is ever lost;
    * otherwise, at least one event stored (or already stored, or suppressed) → 200
      `{"success": true, ...}` listing the events rejected for good (validation); that
      is what Segment's Tracking API does, and a 4xx would make the SDK drop the whole
      batch, stored events and all, from its own bookkeeping and logs as a failure;
    * every event rejected for good → their common status (401 for a bad key, 413 for a
      single oversized event, ...), or 400 when they differ.

    Every body lists one result per event, in order.
    """
    results = [outcome.as_json() for outcome in outcomes]
    stored = sum(outcome.outcome == STORED for outcome in outcomes)
    duplicates = sum(outcome.outcome == DUPLICATE for outcome in outcomes)
    suppressed = sum(outcome.outcome == SUPPRESSED for outcome in outcomes)
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    counts = {
        "stored": stored,
        "duplicates": duplicates,
        "suppressed": suppressed,
        "rejected": len(failed),
    }
    for status in _RETRY_PRIORITY:
        transient = [outcome for outcome in failed if outcome.status == status]
        if transient:
            first = transient[0]
            message = (
                f"{len(transient)} of {len(outcomes)} events were not stored for a temporary "
                f"reason ({first.message}); retry the whole request: events already stored "
                "are recognised by messageId"
            )
            code = first.code or "internal"
            return status, {
                "success": False,
                "code": code,
                "message": message,
                **counts,
                "results": results,
            }
    if len(failed) < len(outcomes):
        return 200, {"success": True, **counts, "results": results}
    statuses = {outcome.status for outcome in failed}
    codes = {outcome.code for outcome in failed}
    status = statuses.pop() if len(statuses) == 1 else 400
    if len(failed) == 1 or (len(codes) == 1 and len({o.message for o in failed}) == 1):
        code, message = failed[0].code or "invalid_event", failed[0].message or ""
    else:
        code = (codes.pop() if len(codes) == 1 else None) or "events_rejected"
        message = f"none of the {len(failed)} events was stored: see `results`"
    return status, {
        "success": False,
        "code": code,
        "message": message,
        **counts,
        "results": results,
    }
