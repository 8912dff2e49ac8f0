"""Segment's Direct Destination contract as a list of scenarios, and the checks on answers.

Each scenario sends one request the way Segment would and states which statuses
are right. Beyond the status, every answer is checked for what Segment relies on:
an error must be JSON with a `message` (Segment shows it in its delivery
debugger); and the retry consequence is named: Segment retries 5xx (except 501),
408 and 429 for four hours and drops every other 4xx (segment-docs
partners/faqs.md, connections/destinations "Retries").
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

RETRIED_4XX: Final = frozenset({408, 429})


def segment_consequence(status: int) -> str:
    """What Segment does after `status`: delivered, retried or dropped."""
    if 200 <= status < 300:
        return "delivered"
    if status in RETRIED_4XX or (status >= 500 and status not in (501, 505)):
        return "retried"
    return "dropped"


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Scenario:
    """One situation of the contract. When it sends several requests, the last answer
    is judged (earlier ones set the stage) and every earlier one must be a 2xx."""

    name: str
    description: str
    #: Statuses that pass. The first is what a well-behaved endpoint answers.
    expected: tuple[int, ...]
    build: Callable[[str, str], list[Request]]  # (api_key, settings header) -> requests
    #: Whether the event is the client's fault (then a 5xx means hours of useless retries)
    #: or fine (then a dropped 4xx means a lost event).
    client_error: bool = False


def basic(api_key: str) -> str:
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


def segment_headers(api_key: str, settings: str) -> dict[str, str]:
    """Exactly the headers Segment sends (partners/direct-destination.md)."""
    headers = {
        "Accept": "*/*",
        "Authorization": basic(api_key),
        "Cache-Control": "no-cache",
        "Content-Type": "application/json",
        "User-Agent": "Segment.io/1.0",
    }
    if settings:
        headers["X-Segment-Settings"] = settings
    return headers


def event(kind: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": kind,
        "messageId": f"contract-{uuid.uuid4()}",
        "userId": "contract-user-1",
        "anonymousId": "507f191e810c19729de860ea",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "context": {"library": {"name": "inlet-contract-test", "version": "1"}},
        "integrations": {},
    }
    base.update(extra)
    return base


VALID_EVENTS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "identify": lambda: event("identify", traits={"email": "peter@example.com"}),
    "track": lambda: event("track", event="Order Completed", properties={"revenue": 39.95}),
    "page": lambda: event("page", name="Home", properties={"path": "/"}),
    "screen": lambda: event("screen", name="Home"),
    "group": lambda: event("group", groupId="group-1", traits={"name": "Initech"}),
    "alias": lambda: event("alias", previousId="507f191e810c19729de860ea"),
    # A user of its own: the scenarios after it send contract-user-1's events, which a
    # destination honouring the delete would rightly keep out (Inlet answers `suppressed`).
    "delete": lambda: {
        "type": "delete",
        "messageId": f"contract-{uuid.uuid4()}",
        "userId": "contract-user-deleted",
        "context": None,
        "integrations": None,
    },
}
#: Segment's partner docs ask every destination for these four; others may answer 501.
REQUIRED_TYPES: Final = ("identify", "track", "page", "group")


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _valid(kind: str) -> Callable[[str, str], list[Request]]:
    def build(key: str, settings: str) -> list[Request]:
        return [Request(segment_headers(key, settings), _json(VALID_EVENTS[kind]()))]

    return build


def _with_headers(
    change: dict[str, str | None], body: Any = None
) -> Callable[[str, str], list[Request]]:
    def build(key: str, settings: str) -> list[Request]:
        headers = segment_headers(key, settings)
        for name, value in change.items():
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        payload = body if isinstance(body, bytes) else _json(body or VALID_EVENTS["track"]())
        return [Request(headers, payload)]

    return build


def _with_body(body: bytes | Callable[[], bytes]) -> Callable[[str, str], list[Request]]:
    def build(key: str, settings: str) -> list[Request]:
        payload = body() if callable(body) else body
        return [Request(segment_headers(key, settings), payload)]

    return build


def _redelivery(key: str, settings: str) -> list[Request]:
    request = Request(segment_headers(key, settings), _json(VALID_EVENTS["track"]()))
    return [request, request]


def _oversize(limit: int) -> Callable[[], bytes]:
    return lambda: _json(event("track", event="Big", properties={"blob": "x" * limit}))


def scenarios(oversize_bytes: int = 2 * 1024 * 1024) -> list[Scenario]:
    """The conformance scenarios, in report order."""
    out = [
        Scenario(
            f"valid {kind}",
            f"a well-formed {kind} event with Segment's headers",
            (200, 202) if kind in REQUIRED_TYPES else (200, 202, 501),
            _valid(kind),
        )
        for kind in VALID_EVENTS
    ]
    out += [
        Scenario(
            "redelivered messageId",
            "the same event twice (Segment retries after timeouts): the second must succeed too",
            (200, 202),
            _redelivery,
        ),
        Scenario(
            "missing key",
            "no Authorization header",
            (401,),
            _with_headers({"Authorization": None}),
            client_error=True,
        ),
        Scenario(
            "garbled key",
            "Authorization that is not Basic base64",
            (401,),
            _with_headers({"Authorization": "Basic %%%not-base64%%%"}),
            client_error=True,
        ),
        Scenario(
            "unknown key",
            "a well-formed Basic header with a key nobody issued",
            (401, 403),
            _with_headers({"Authorization": basic(f"unknown-{uuid.uuid4().hex}")}),
            client_error=True,
        ),
        Scenario(
            "garbled settings",
            "X-Segment-Settings that is not base64",
            (400,),
            _with_headers({"X-Segment-Settings": "%%%not-base64%%%"}),
            client_error=True,
        ),
        Scenario(
            "settings not an object",
            "X-Segment-Settings that is base64 of a JSON array",
            (400,),
            _with_headers({"X-Segment-Settings": base64.b64encode(b"[1]").decode()}),
            client_error=True,
        ),
        Scenario(
            "malformed JSON",
            "a body that is not JSON",
            (400,),
            _with_body(b'{"type": "track", "userId": '),
            client_error=True,
        ),
        Scenario(
            "JSON array",
            "a JSON array instead of one event",
            (400,),
            _with_body(b"[1, 2, 3]"),
            client_error=True,
        ),
        Scenario("empty body", "no body at all", (400,), _with_body(b""), client_error=True),
        Scenario(
            "missing required field",
            "a track event without `event`",
            (400,),
            _with_body(lambda: _json(event("track"))),
            client_error=True,
        ),
        Scenario(
            "unsupported type",
            "a `type` no destination supports",
            (501,),
            _with_body(lambda: _json(event("teleport"))),
            client_error=True,
        ),
        Scenario(
            "oversize body",
            f"a {oversize_bytes // 1024} KiB event (Segment caps events at 32 KB)",
            (413, 400),
            _with_body(_oversize(oversize_bytes)),
            client_error=True,
        ),
    ]
    return out


@dataclass
class Outcome:
    scenario: Scenario
    status: int | None
    content_type: str
    body: bytes
    problems: list[str]
    sent: Request | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def consequence(self) -> str:
        return "no answer" if self.status is None else segment_consequence(self.status)


def judge(scenario: Scenario, status: int, content_type: str, body: bytes) -> list[str]:
    """Everything wrong with an answer to `scenario` (empty: it passes)."""
    problems: list[str] = []
    consequence = segment_consequence(status)
    if status not in scenario.expected:
        wanted = " or ".join(str(s) for s in scenario.expected)
        problems.append(f"expected {wanted}, got {status}")
        if scenario.client_error and consequence == "retried":
            problems.append("Segment retries this for hours although it can never succeed")
        if not scenario.client_error and consequence == "dropped":
            problems.append("Segment drops the event: it is lost")
        if scenario.client_error and consequence == "delivered":
            problems.append("accepted an event Segment's contract says must be refused")
    if status >= 400:
        if content_type.split(";")[0].strip().lower() != "application/json":
            problems.append(
                f"error Content-Type is {content_type or 'missing'!r}, not application/json"
            )
        try:
            parsed = json.loads(body)
        except ValueError:
            problems.append("error body is not JSON")
        else:
            if not isinstance(parsed, dict) or not isinstance(parsed.get("message"), str):
                problems.append('error body has no string "message"')
    return problems
