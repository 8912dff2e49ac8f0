"""Property-based fuzzing of the bridge's HTTP surface, against a real core and store.

Requests are written byte for byte on raw sockets (`Connection: close`, then read to
EOF), so headers, framing and bodies are exactly what the strategies produce. Every
example checks the webhook contract (the README's status contract):

* never a 5xx except 503 (retry later) and 501 (type not supported);
* the answer is JSON (`Content-Type: application/json`) with a non-empty `message`,
  except when aiohttp's HTTP *parser* refuses the request before any handler runs: it
  then answers a plain-text 400 of its own. `parser_rejects()` names exactly those
  requests: a byte outside HTAB/SP/VCHAR/obs-text in a header value, a header name
  that is not a token, a request line with a byte outside VCHAR, a line over the
  64 KiB limit, and `Content-Encoding: br`/`zstd` (aiohttp refuses to parse a body
  it has no decoder for). No other request may get a non-JSON answer;
* no hang: every socket has a 10 s timeout;
* a 200 means stored: the payload in the store is the body that was sent
  (decompressed when it was sent with Content-Encoding);
* after every example a plain valid event still gets 200 and is stored.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import socket
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pytest
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st

from http_bridge.config import BridgeConfig
from http_bridge.server import MAX_HEADER_BYTES
from tests.fuzzing import FUZZ
from tests.stack import LiveStack, basic

MAX_BODY: Final = BridgeConfig().max_body_bytes  # the live stack runs with the defaults
TIMEOUT_S: Final = 10.0
#: orjson refuses documents nested deeper than this many arrays/objects.
MAX_DEPTH: Final = 1024


_ids = itertools.count()


def fresh_id(tag: str) -> str:
    """A messageId no other example of this session uses (the `live` store is shared)."""
    return f"fuzz-http-{tag}-{next(_ids):08d}"  # fixed width: draws must not depend on it


# -- the wire ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def build(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    *,
    chunks: Sequence[int] | None = None,
) -> bytes:
    """One HTTP/1.1 request; Content-Length framing, or chunked with `chunks` sizes."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if chunks is None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    lines.append(b"Transfer-Encoding: chunked")
    framed, start = [], 0
    for size in [*chunks, len(body)]:
        piece = body[start : start + size]
        start += len(piece)
        if piece:
            framed.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    return b"\r\n".join(lines) + b"\r\n\r\n" + b"".join(framed) + b"0\r\n\r\n"


def exchange(port: int, request: bytes, *, head: bool = False) -> Reply | None:
    """Send `request`, read the answer to EOF. None: closed without an answer.

    `head`: the request was HEAD, so the answer has headers only (unless aiohttp's
    parser refused the request: it then sends its text body anyway).
    """
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        try:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered early (413) and stopped reading: read the answer
            while chunk := sock.recv(1 << 16):
                data += chunk
        except ConnectionResetError:
            pass  # RST after an early answer may discard it; the caller decides
        except TimeoutError:
            raise AssertionError(f"no answer within {TIMEOUT_S} s: the bridge hangs") from None
    if not data:
        return None
    # Not `head`: that is the argument (a HEAD request), read below.
    message_head, separator, body = bytes(data).partition(b"\r\n\r\n")
    assert separator, f"truncated answer {bytes(data[:200])!r}"
    status_line, *header_lines = message_head.split(b"\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if "content-length" in headers and not (head and body == b""):
        assert len(body) == int(headers["content-length"]), "answer shorter than Content-Length"
    return Reply(int(status_line.split()[1]), headers, body)


_TOKEN: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _field_value_ok(value: bytes) -> bool:
    return all(b == 0x09 or 0x20 <= b <= 0x7E or b >= 0x80 for b in value)


def parser_rejects(target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """True if aiohttp's parser may refuse the request with its own plain-text 400.

    These requests never reach the application (so its JSON error middleware
    cannot answer them). Everything else must be answered in JSON.
    """
    if not target.startswith(b"/") or any(not 0x21 <= b <= 0x7E for b in target):
        return True
    if len(target) > MAX_HEADER_BYTES - 64:
        return True
    for name, value in headers:
        if not name or any(b not in _TOKEN for b in name) or not _field_value_ok(value):
            return True
        if len(name) + len(value) + 2 > MAX_HEADER_BYTES - 64:
            return True
        if name.lower() == b"content-encoding" and value.strip().lower() in (b"br", b"zstd"):
            return True
    return False


def check_contract(reply: Reply | None, *, method: bytes = b"POST", parser_level: bool) -> Reply:
    """The properties every answer has; returns the reply for further checks."""
    assert reply is not None, "the connection closed without an answer"
    if currently_in_test_context():
        event(f"HTTP {reply.status}")  # for --hypothesis-show-statistics
    assert reply.status < 500 or reply.status in (501, 503), (reply.status, reply.body[:300])
    if reply.status == 503:
        assert reply.headers.get("retry-after", "").isdigit()
    if reply.status == 401 and reply.headers.get("content-type") == "application/json":
        assert reply.headers.get("www-authenticate", "").startswith("Basic")
    content_type = reply.headers.get("content-type", "")
    if parser_level and reply.status == 400 and content_type.startswith("text/plain"):
        return reply  # aiohttp's parser refused it (see the module docstring)
    if method == b"HEAD":
        assert reply.body == b""
        assert content_type == "application/json", (reply.status, content_type)
        return reply
    assert content_type == "application/json", (reply.status, content_type, reply.body[:200])
    body = reply.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("message"), str) and body["message"], body
    if reply.status >= 400:
        assert isinstance(body.get("code"), str) and body["code"], body
    return reply


def stored_payload(live: LiveStack, message_id: str) -> bytes | None:
    account = live.stack.account_ids["acme"]
    return live.run(live.stack.store.get_event_payload(account, message_id))


def auth_header(live: LiveStack) -> tuple[bytes, bytes]:
    return (b"Authorization", basic(live.stack.keys["ingest"]).encode())


JSON_HEADERS: Final = [(b"Content-Type", b"application/json"), (b"User-Agent", b"Segment.io/1.0")]


def post(
    live: LiveStack,
    body: bytes,
    headers: Sequence[tuple[bytes, bytes]] | None = None,
    *,
    chunks: Sequence[int] | None = None,
) -> Reply | None:
    sent = [auth_header(live), *JSON_HEADERS] if headers is None else list(headers)
    return exchange(live.stack.bridge.port, build(b"POST", b"/segment", sent, body, chunks=chunks))


def event_bytes(message_id: str, **extra: Any) -> bytes:
    event = {"type": "track", "userId": "u-fuzz", "event": "Fuzzed", "messageId": message_id}
    return orjson.dumps({**event, **extra})


def assert_stored(live: LiveStack, reply: Reply | None, message_id: str, sent: bytes) -> None:
    assert reply is not None and reply.status == 200, reply
    body = reply.json()
    assert body["messageId"] == message_id and not body.get("duplicate"), body
    assert stored_payload(live, message_id) == sent


def still_works(live: LiveStack) -> None:
    """After any example, a plain valid event is still stored."""
    message_id = fresh_id("canary")
    sent = event_bytes(message_id)
    assert_stored(live, post(live, sent), message_id, sent)


# -- bodies: crafted JSON with a known verdict ----------------------------------------
#
# Each fragment is (bytes, bad, depth): `bad` when orjson must refuse it, `depth` the
# arrays/objects it nests. The verdict of a whole event is then known in advance:
# 413 over the size limit, else 400 `invalid_json` if any fragment is bad or the
# nesting exceeds MAX_DEPTH, else 200 with the exact bytes in the store.

Fragment = tuple[bytes, bool, int]

GOOD_NUMBERS: Final = [
    b"0",
    b"-0",
    b"1.5",
    b"-0.0e-0",
    b"1E+2",
    b"1e308",
    b"-1e308",
    b"5e-324",
    b"1e-400",  # underflows to 0.0: accepted (the raw bytes are what is stored)
    b"18446744073709551615",
    b"18446744073709551616",
    b"123456789012345678901234567890",
    b"1" + b"0" * 308,  # 1e308 written out: still a finite double
]
BAD_NUMBERS: Final = [
    b"1e400",
    b"-1e400",
    b"1" + b"0" * 309,  # beyond float range: orjson refuses
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
]
#: Inside a string literal: sequences orjson accepts / refuses.
GOOD_INNER: Final = [
    b"\\u0000",
    b"\\ud83d\\ude00",
    "\U0001f600".encode(),
    b'\\"',
    b"\\\\",
    b"\\/",
    b"\x7f",
    b"\\u007f",
    b"\\uffff",
    b"\xef\xbf\xbf",
    b"\xf4\x8f\xbf\xbf",
    b"\\b\\f\\n\\r\\t",
]
BAD_INNER: Final = [
    b"\\ud800",
    b"\\udfff",
    b"\\udbff\\u0041",  # lone surrogate escapes
    b"\x00",
    b"\x1f",
    b"\n",  # raw control characters
    b"\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",  # not UTF-8
    b"\\x41",
    b"\\u12",
    b"\\U0001F600",  # not JSON escapes
]


def _escaped(text: str, ascii_only: bool) -> bytes:
    return json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode("utf-8")


@st.composite
def string_literal(draw: st.DrawFn, allow_bad: bool = True, min_size: int = 0) -> Fragment:
    ascii_only = draw(st.booleans())
    parts, bad = [_escaped(draw(st.text(max_size=12)), ascii_only)], False
    for _ in range(draw(st.integers(0, 3))):
        if allow_bad and draw(st.integers(0, 5)) == 0:
            parts.append(draw(st.sampled_from(BAD_INNER)))
            bad = True
        else:
            parts.append(draw(st.sampled_from(GOOD_INNER)))
        parts.append(_escaped(draw(st.text(max_size=6)), ascii_only))
    body = b"".join(parts)
    if len(body) < min_size:
        body += b"x" * min_size
    return b'"' + body + b'"', bad, 0


def number_literal(allow_bad: bool) -> st.SearchStrategy[Fragment]:
    bad = st.sampled_from(BAD_NUMBERS if allow_bad else GOOD_NUMBERS)
    return st.one_of(
        st.sampled_from(GOOD_NUMBERS).map(lambda b: (b, False, 0)),
        bad.map(lambda b: (b, b in BAD_NUMBERS, 0)),
        # Integers parse as doubles beyond 64 bits: from DBL_MAX + half an ulp on they
        # round to infinity, which orjson refuses.
        st.one_of(
            st.integers(), st.integers(2**1023, 2**1025 if allow_bad else 2**1024 - 2**971)
        ).map(lambda i: (str(i).encode(), abs(i) >= 2**1024 - 2**970, 0)),
        st.floats(allow_nan=False, allow_infinity=False).map(
            lambda f: (repr(f).encode(), False, 0)
        ),
    )


def deep(depth: int) -> Fragment:
    """Arrays and objects alternating, `depth` levels, a number innermost."""
    text = b"0"
    for level in reversed(range(depth)):
        text = b'{"d":' + text + b"}" if level % 2 else b"[" + text + b"]"
    return text, False, depth


def wide(count: int) -> Fragment:
    return b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(count)) + b"}", False, 1


WHITESPACE = st.sampled_from([b"", b"", b" ", b"\n", b"\t", b" \r\n "])


def _array(draw: st.DrawFn, items: list[Fragment]) -> Fragment:
    gap = draw(WHITESPACE)
    text = b"[" + gap + (b"," + gap).join(i[0] for i in items) + b"]"
    return text, any(i[1] for i in items), 1 + max((i[2] for i in items), default=0)


def _object(draw: st.DrawFn, pairs: list[tuple[Fragment, Fragment]]) -> Fragment:
    gap = draw(WHITESPACE)
    text = b"{" + (b"," + gap).join(k[0] + b":" + gap + v[0] for k, v in pairs) + b"}"
    bad = any(k[1] or v[1] for k, v in pairs)
    return text, bad, 1 + max((v[2] for _, v in pairs), default=0)


def scalar(allow_bad: bool) -> st.SearchStrategy[Fragment]:
    return st.one_of(
        string_literal(allow_bad),
        number_literal(allow_bad),
        st.sampled_from([b"true", b"false", b"null"]).map(lambda b: (b, False, 0)),
    )


@st.composite
def json_value(draw: st.DrawFn, allow_bad: bool) -> Fragment:
    """A property value; with `allow_bad`, possibly one orjson must refuse."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        near = MAX_DEPTH + (8 if allow_bad else -2)  # 2 levels: event object, properties
        return deep(draw(st.one_of(st.integers(1, 40), st.integers(MAX_DEPTH - 8, near))))
    if kind == 1:
        return wide(draw(st.one_of(st.integers(0, 50), st.just(10_000))))
    if kind == 2:
        size = draw(st.sampled_from([1000, 100_000, MAX_BODY - 300, MAX_BODY + 1, 600_000]))
        return b'"' + b"a" * size + b'"', False, 0
    tree = st.recursive(
        scalar(allow_bad),
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(lambda items: ("a", items)),
            st.lists(st.tuples(string_literal(allow_bad), children), max_size=4).map(
                lambda pairs: ("o", pairs)
            ),
        ),
        max_leaves=12,
    )
    return _build(draw, draw(tree))


def _build(draw: st.DrawFn, node: Any) -> Fragment:
    if isinstance(node[0], bytes):
        return node
    kind, children = node
    if kind == "a":
        return _array(draw, [_build(draw, c) for c in children])
    return _object(draw, [(k, _build(draw, v)) for k, v in children])


#: Extra top-level keys: none of them normalise to a Spec field name.
TOP_KEYS: Final = [
    (b'"\\u0000"', False),
    (b'"x\\u0000y"', False),
    (b'"\\ud83d\\ude00"', False),
    (b'"_metadata"', False),
    (b'"\xf0\x9f\x98\x80"', False),
    (b'"\\ud800"', True),
    (b'"\xff"', True),
    (b'"a\x00"', True),
]


@st.composite
def crafted_event(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    """(body, messageId, bad): a track event with adversarial fragments in it."""
    message_id = fresh_id("crafted")
    # About half the events may hold refused fragments; the rest only accepted ones.
    allow_bad = draw(st.booleans())
    user = draw(string_literal(allow_bad, min_size=1))
    name = draw(string_literal(allow_bad, min_size=1))
    count = draw(st.integers(0, 3))
    properties = [
        (draw(string_literal(allow_bad)), draw(json_value(allow_bad))) for _ in range(count)
    ]
    props = _object(draw, properties)
    keys = TOP_KEYS if allow_bad else [k for k in TOP_KEYS if not k[1]]
    extras = draw(st.lists(st.sampled_from(keys), max_size=2))
    fields = [
        (b'"type"', b'"track"'),
        (b'"userId"', user[0]),
        (b'"event"', name[0]),
        (b'"messageId"', b'"' + message_id.encode() + b'"'),
        (b'"properties"', props[0]),
        *((key, b"1") for key, _ in extras),
    ]
    order = draw(st.permutations(range(len(fields))))
    body = b"{" + b",".join(fields[i][0] + b":" + fields[i][1] for i in order) + b"}"
    bad = user[1] or name[1] or props[1] or any(b for _, b in extras) or 1 + props[2] > MAX_DEPTH
    return body, message_id, bad


def chunking(size: int) -> st.SearchStrategy[list[int] | None]:
    return st.one_of(st.none(), st.lists(st.integers(1, max(1, size)), min_size=1, max_size=5))


@FUZZ
@given(case=crafted_event(), data=st.data())
def test_crafted_json_is_stored_exactly_or_refused(
    live: LiveStack, case: tuple[bytes, str, bool], data: st.DataObject
) -> None:
    body, message_id, bad = case
    chunks = data.draw(chunking(len(body)), label="chunks")
    reply = post(live, body, chunks=chunks)
    if len(body) > MAX_BODY:
        # An early 413 may be lost to the RST of the unread body; never a 2xx.
        if reply is not None:
            assert check_contract(reply, parser_level=False).status == 413
        assert stored_payload(live, message_id) is None
    elif bad:
        reply = check_contract(reply, parser_level=False)
        assert (reply.status, reply.json()["code"]) == (400, "invalid_json"), reply.json()
        assert stored_payload(live, message_id) is None
    else:
        assert_stored(live, check_contract(reply, parser_level=False), message_id, body)
    still_works(live)


# -- bodies: anything at all ------------------------------------------------------------


def json_values(finite: bool) -> st.SearchStrategy[Any]:
    numbers = (
        st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
        if finite
        else st.integers() | st.floats(allow_nan=False)
    )
    return st.recursive(
        st.none() | st.booleans() | numbers | st.text(),
        lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(), kids, max_size=5),
        max_leaves=20,
    )


JSON_VALUES = json_values(finite=False)  # json.dumps writes Infinity: not JSON
FINITE_JSON = json_values(finite=True)


@st.composite
def mutated_event(draw: st.DrawFn) -> bytes:
    """A valid event with random bytes flipped, inserted or deleted."""
    body = bytearray(event_bytes(fresh_id("mutated"), properties={"a": [1, "b", None]}))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body) - 1))
        action = draw(st.integers(0, 2))
        if action == 0:
            body[at] = draw(st.integers(0, 255))
        elif action == 1:
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del body[at]
    return bytes(body)


def _dump(value: Any, ascii_only: bool) -> bytes:
    # json.dumps writes NaN/Infinity for non-finite floats, which JSON does not allow.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


SPEC_TYPES: Final = ["identify", "track", "page", "screen", "group", "alias", "delete"]
_TEXT = st.text(min_size=1, max_size=10)
_OBJECT = st.dictionaries(st.text(max_size=8), FINITE_JSON, max_size=4)
_ID = _TEXT | st.integers(-(2**63), 2**63 - 1)
#: Spec fields (in several casings) and values of the type the Spec gives them.
SPEC_FIELDS: Final = {
    "userId": _ID,
    "user_id": _ID,
    "UserID": _ID,
    "User ID": _ID,
    "anonymousId": _ID,
    "groupId": _ID,
    "previousId": _ID,
    "messageId": _ID,
    "event": _TEXT,
    "name": _TEXT,
    "category": _TEXT,
    "context": _OBJECT,
    "properties": _OBJECT,
    "traits": _OBJECT,
    "timestamp": _TEXT | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
}


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """Spec-shaped objects: real and near-miss types, Spec fields with mostly right types."""
    choice = draw(st.integers(0, 9))
    kind = draw(
        st.sampled_from(SPEC_TYPES)
        if choice < 5
        else st.sampled_from(SPEC_TYPES).map(str.upper)
        if choice < 7
        else st.sampled_from(SPEC_TYPES).map(lambda t: t[0].upper() + "_" + t[1:])
        if choice < 8
        else st.sampled_from(["batch", "log", "Identify2", "trackk"]) | st.text(max_size=8)
        if choice < 9
        else FINITE_JSON
    )
    body: dict[str, Any] = {draw(st.sampled_from(["type", "Type", "TYPE", "action"])): kind}
    for field in draw(st.lists(st.sampled_from(sorted(SPEC_FIELDS)), max_size=6, unique=True)):
        right = SPEC_FIELDS[field]
        body[field] = draw(st.one_of(right, right, right, FINITE_JSON))
    body.update(draw(st.dictionaries(st.text(max_size=8), FINITE_JSON, max_size=3)))
    return body


ANY_BODY = st.one_of(
    st.binary(max_size=300),
    st.builds(_dump, JSON_VALUES, st.booleans()),
    st.builds(_dump, st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=8), st.booleans()),
    st.builds(_dump, event_like(), st.booleans()),
    st.builds(_dump, event_like(), st.booleans()),
    mutated_event(),
)


@FUZZ
@given(body=ANY_BODY)
def test_any_body_gets_a_contract_answer(live: LiveStack, body: bytes) -> None:
    reply = check_contract(post(live, body), parser_level=False)
    assert reply.status in (200, 400, 501), (reply.status, reply.json())
    if reply.status == 200:
        message_id = reply.json()["messageId"]
        assert stored_payload(live, message_id) is not None
        if not reply.json().get("duplicate"):
            assert stored_payload(live, message_id) == body
    still_works(live)


# -- headers ------------------------------------------------------------------------------

# Each strategy yields (header lines, ok): `ok` when that header alone lets a valid
# event through.
Headers = tuple[list[tuple[bytes, bytes]], bool]
HEADER_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def _b64(raw: bytes, urlsafe: bool, padded: bool) -> bytes:
    text = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    return text if padded else text.rstrip(b"=")


def authorization(live: LiveStack) -> st.SearchStrategy[Headers]:
    key = live.stack.keys["ingest"].encode()
    admin = live.stack.keys["admin"].encode()  # has the ingest scope too

    def line(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", value)]

    good = st.one_of(
        st.builds(
            lambda scheme, pad, urlsafe, padded, user: line(
                scheme + pad + _b64(user, urlsafe, padded)
            ),
            st.sampled_from([b"Basic", b"basic", b"BASIC"]),
            st.sampled_from([b" ", b"   "]),
            st.booleans(),
            st.booleans(),
            st.sampled_from([key + b":", key, key + b":ignored", admin + b":"]),
        ),
    )
    bad = st.one_of(
        st.just([]),
        st.sampled_from(
            [b"", b"Basic", b"Basic ", b"Bearer " + key, b"Basic " + key, b"Digest x"]
        ).map(line),
        st.builds(lambda raw: line(b"Basic " + base64.b64encode(raw)), st.binary(max_size=60)),
        st.builds(
            lambda user: line(b"Basic " + base64.b64encode(user.encode("utf-8", "surrogatepass"))),
            st.text(max_size=30),
        ),
        st.sampled_from([b"\xff\xfe", b":" + key, key + b"x:", b"\xed\xa0\x80:", b"inlet_:"]).map(
            lambda raw: line(b"Basic " + base64.b64encode(raw))
        ),
        HEADER_BYTES.map(line),
        HEADER_BYTES.map(lambda raw: line(b"Basic " + raw)),
        st.sampled_from([1000, 40_000, MAX_HEADER_BYTES + 10]).map(
            lambda n: line(b"Basic " + base64.b64encode(b"k" * n + b":"))
        ),
    )
    good_lines = good.map(lambda h: (h, True))
    return st.one_of(good_lines, good_lines, bad.map(lambda h: (h, False)))


def settings_header() -> st.SearchStrategy[Headers]:
    def line(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"X-Segment-Settings", value)]

    objects = st.dictionaries(st.text(max_size=10), FINITE_JSON, max_size=5)
    good: st.SearchStrategy[Headers] = st.one_of(
        st.just([]),
        st.sampled_from([b"", b"  "]).map(line),
        st.builds(
            lambda value, urlsafe, padded: line(_b64(orjson.dumps(value), urlsafe, padded)),
            objects,
            st.booleans(),
            st.booleans(),
        ),
        # `{...}` that orjson does not read: the event is stored, without the settings.
        st.sampled_from([b'{"a": "\\ud800"}', b'{"a": 1e400}', b"{not json}"]).map(
            lambda text: line(base64.b64encode(text))
        ),
    )
    bad = st.one_of(
        HEADER_BYTES.filter(lambda b: b.strip() != b"").map(line),
        st.builds(lambda value: line(base64.b64encode(_dump(value, True))), JSON_VALUES),
        st.binary(min_size=1, max_size=40).map(lambda raw: line(base64.b64encode(b"\xff" + raw))),
        st.just(line(base64.b64encode(b"{" * 2000))),
        st.just(line(base64.b64encode(b'{"k": "' + b"v" * 60_000 + b'"}'))),  # over 64 KiB
    )
    good_lines = good.map(lambda h: (h, True))
    return st.one_of(good_lines, good_lines, bad.map(lambda h: (h, False)))


def content_type() -> st.SearchStrategy[Headers]:
    def line(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"Content-Type", value)]

    good: st.SearchStrategy[Headers] = st.one_of(
        st.just([]),
        st.sampled_from(
            [
                b"",
                b"application/json",
                b"Application/JSON",
                b"application/json; charset=utf-8",
                b"application/json;charset=latin-1",
                b"application/vnd.segment+json",
                b'application/json ; x="\xff"',
            ]
        ).map(line),
    )
    bad = st.one_of(
        st.sampled_from(
            [
                b"text/plain",
                b"application/jsonx",
                b"application/x-www-form-urlencoded",
                b"multipart/form-data; boundary=x",
                b"json",
                b"*/*",
                b"application/\xff",
                b"\xed\xa0\x80/json",
            ]
        ).map(line),
        HEADER_BYTES.map(line),
    )
    good_lines = good.map(lambda h: (h, True))
    return st.one_of(good_lines, good_lines, bad.map(lambda h: (h, None)))


# Compressed once: ~50 MB of zeros in ~50 KB, far over the body limit when inflated.
_BOMB: bytes | None = None


def gzip_bomb() -> bytes:
    global _BOMB
    if _BOMB is None:
        _BOMB = gzip.compress(b"\0" * 50_000_000, compresslevel=9)
    return _BOMB


Encoder = Callable[[bytes], bytes]


def content_encoding() -> st.SearchStrategy[tuple[list[tuple[bytes, bytes]], Encoder, bool | None]]:
    """(header lines, body encoder, ok): ok None when the verdict depends on more."""

    def line(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"Content-Encoding", value)]

    def identity(body: bytes) -> bytes:
        return body

    return st.one_of(
        st.just(([], identity, True)),
        st.just((line(b"identity"), identity, True)),
        st.sampled_from([b"gzip", b"GZIP", b"x-gzip"]).map(
            lambda name: (line(name), gzip.compress, name != b"x-gzip")
        ),
        st.just((line(b"deflate"), zlib.compress, True)),
        st.binary(max_size=200).map(lambda raw: (line(b"gzip"), lambda _b, r=raw: r, False)),
        st.just((line(b"gzip"), lambda _b: gzip_bomb(), False)),
        st.just((line(b"gzip"), lambda b: gzip.compress(gzip.compress(b)), False)),
        st.sampled_from([b"br", b"zstd", b"compress", b"br, gzip", b"\xff"]).map(
            lambda name: (line(name), identity, None)
        ),
    )


#: Headers the fuzzed extras must not repeat: they change framing or are drawn above.
RESERVED: Final = {
    b"host",
    b"connection",
    b"content-length",
    b"transfer-encoding",
    b"expect",
    b"upgrade",
    b"content-encoding",
    b"content-type",
    b"authorization",
    b"x-segment-settings",
}


def extra_headers() -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=12)
    raw = st.binary(min_size=1, max_size=8).filter(
        lambda b: b":" not in b and b"\r" not in b and b"\n" not in b and b.strip() == b
    )
    name = st.one_of(token.map(str.encode), raw).filter(lambda b: b.lower() not in RESERVED)
    return st.lists(st.tuples(name, HEADER_BYTES), max_size=3)


@FUZZ
@given(data=st.data())
def test_adversarial_headers(live: LiveStack, data: st.DataObject) -> None:
    auth, auth_ok = data.draw(authorization(live), label="authorization")
    settings_lines, settings_ok = data.draw(settings_header(), label="settings")
    type_lines, type_ok = data.draw(content_type(), label="content-type")
    encoding_lines, encode, encoding_ok = data.draw(content_encoding(), label="encoding")
    extra = data.draw(extra_headers(), label="extra")
    message_id = fresh_id("headers")
    event = event_bytes(message_id)
    headers = [*auth, *settings_lines, *type_lines, *encoding_lines, *extra]
    parser_level = parser_rejects(b"/segment", headers)
    reply = check_contract(post(live, encode(event), headers), parser_level=parser_level)
    others_ok = settings_ok and type_ok and encoding_ok
    if not parser_level:
        if not auth_ok:
            # The bridge checks the Authorization syntax first, the core the key itself
            # (after the bridge's media type, settings and body checks).
            assert reply.status in (400, 401, 413, 415), (reply.status, reply.json())
            if others_ok:
                assert reply.status == 401, (reply.status, reply.json())
        elif others_ok:
            assert_stored(live, reply, message_id, event)
    if reply.status != 200:
        assert stored_payload(live, message_id) is None
    else:
        assert stored_payload(live, message_id) is not None
    still_works(live)


# -- methods and paths -------------------------------------------------------------------

METHODS: Final = [b"GET", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD", b"POST"]
ROUTES: Final = {
    b"/segment": {b"POST"},
    b"/healthz": {b"GET", b"HEAD"},
    b"/readyz": {b"GET", b"HEAD"},
}

PATHS = st.one_of(
    st.sampled_from([*ROUTES, b"/", b"/segment/", b"/SEGMENT", b"//segment", b"/segment?x=1"]),
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?#%\"<>{}|\\^`", max_size=40
    ).map(lambda s: b"/" + s.encode()),
    st.binary(max_size=20).map(lambda b: b"/" + "".join(f"%{x:02x}" for x in b).encode()),
    st.binary(max_size=20).filter(lambda b: b" " not in b and b"\r" not in b and b"\n" not in b),
)


@FUZZ
@given(method=st.sampled_from(METHODS), target=PATHS, body=st.binary(max_size=100))
def test_methods_and_paths(live: LiveStack, method: bytes, target: bytes, body: bytes) -> None:
    headers = [auth_header(live), *JSON_HEADERS]
    parser_level = parser_rejects(target, headers)
    request = build(method, target, headers, body)
    reply = exchange(live.stack.bridge.port, request, head=method == b"HEAD")
    reply = check_contract(reply, method=method, parser_level=parser_level)
    if target in ROUTES:
        if method in ROUTES[target]:
            assert reply.status not in (404, 405)
            if target == b"/healthz":
                assert reply.status == 200
        else:
            assert reply.status == 405 and reply.headers["allow"], reply
    elif (
        not parser_level
        and target.partition(b"?")[0].partition(b"#")[0] not in ROUTES
        and b"%" not in target  # percent-escapes and dot segments may
        and b"." not in target  # decode or normalise to a route
    ):
        assert reply.status == 404, reply
    still_works(live)


# -- specific cases, decided once ---------------------------------------------------------


def _in_properties(value: bytes) -> Callable[[str], bytes]:
    def body(message_id: str) -> bytes:
        return (
            b'{"type":"track","userId":"u","event":"e","messageId":"'
            + message_id.encode()
            + b'","properties":{"v":'
            + value
            + b"}}"
        )

    return body


def _nested(levels: int) -> Callable[[str], bytes]:
    """An event whose total nesting (outer object included) is `levels`."""
    return _in_properties(b"[" * (levels - 2) + b"]" * (levels - 2))


def _exact_size(size: int) -> Callable[[str], bytes]:
    def body(message_id: str) -> bytes:
        shell = _in_properties(b'""')(message_id)
        return _in_properties(b'"' + b"x" * (size - len(shell)) + b'"')(message_id)

    return body


def _with_key(key: bytes) -> Callable[[str], bytes]:
    def body(message_id: str) -> bytes:
        return _in_properties(b'{"' + key + b'": 1}')(message_id)

    return body


STORED, REFUSED = 200, 400
CASES: Final[list[tuple[str, Callable[[str], bytes], int]]] = [
    ("nesting-1024-levels", _nested(MAX_DEPTH), STORED),
    ("nesting-1025-levels", _nested(MAX_DEPTH + 1), REFUSED),
    ("object-with-10000-properties", _in_properties(wide(10_000)[0]), STORED),
    ("number-1e400", _in_properties(b"1e400"), REFUSED),
    ("number--1e400", _in_properties(b"-1e400"), REFUSED),
    ("integer-309-digits", _in_properties(b"1" + b"0" * 309), REFUSED),
    ("integer-309-digits-finite", _in_properties(b"1" + b"0" * 308), STORED),
    ("number-1e-400-underflows", _in_properties(b"1e-400"), STORED),
    ("nul-escape-in-value", _in_properties(b'"a\\u0000b"'), STORED),
    ("nul-escape-in-key", _with_key(b"a\\u0000b"), STORED),
    ("raw-nul-byte-in-value", _in_properties(b'"a\x00b"'), REFUSED),
    ("lone-surrogate-escape-in-value", _in_properties(b'"\\ud800"'), REFUSED),
    ("lone-surrogate-escape-in-key", _with_key(b"\\ud800"), REFUSED),
    ("lone-low-surrogate-escape", _in_properties(b'"\\udc00"'), REFUSED),
    ("surrogate-pair-escape", _in_properties(b'"\\ud83d\\ude00"'), STORED),
    ("invalid-utf8-bytes", _in_properties(b'"\xff\xfe"'), REFUSED),
    ("utf8-encoded-surrogate", _in_properties(b'"\xed\xa0\x80"'), REFUSED),
    ("overlong-utf8-nul", _in_properties(b'"\xc0\x80"'), REFUSED),
    ("body-exactly-at-the-limit", _exact_size(MAX_BODY), STORED),
    ("body-one-byte-over-the-limit", _exact_size(MAX_BODY + 1), 413),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_specific_case(live: LiveStack, make: Callable[[str], bytes], expected: int) -> None:
    message_id = fresh_id("case")
    body = make(message_id)
    reply = check_contract(post(live, body), parser_level=False)
    assert reply.status == expected, reply.json()
    if expected == STORED:
        assert_stored(live, reply, message_id, body)
    else:
        if expected == REFUSED:
            assert reply.json()["code"] == "invalid_json"
        assert stored_payload(live, message_id) is None
    still_works(live)


@pytest.mark.parametrize("method", [b"POST", b"HEAD"])
def test_request_line_over_64_kib_is_refused_by_the_parser(live: LiveStack, method: bytes) -> None:
    target = b"/" + b"a" * (MAX_HEADER_BYTES + 10)
    assert parser_rejects(target, [])
    request = build(method, target, [auth_header(live)], b"")
    reply = check_contract(exchange(live.stack.bridge.port, request), parser_level=True)
    assert reply.status == 400
    still_works(live)


def test_gzip_event_is_stored_decompressed(live: LiveStack) -> None:
    message_id = fresh_id("gzip")
    event = event_bytes(message_id)
    headers = [auth_header(live), *JSON_HEADERS, (b"Content-Encoding", b"gzip")]
    assert_stored(live, post(live, gzip.compress(event), headers), message_id, event)


def test_gzip_bomb_is_413(live: LiveStack) -> None:
    headers = [auth_header(live), *JSON_HEADERS, (b"Content-Encoding", b"gzip")]
    reply = check_contract(post(live, gzip_bomb(), headers), parser_level=False)
    assert (reply.status, reply.json()["code"]) == (413, "payload_too_large")
    still_works(live)


def test_unknown_expectation_is_answered_in_json(live: LiveStack) -> None:
    message_id = fresh_id("expect")
    headers = [auth_header(live), *JSON_HEADERS, (b"Expect", b"teapot")]
    reply = check_contract(post(live, event_bytes(message_id), headers), parser_level=False)
    assert reply.status == 417
