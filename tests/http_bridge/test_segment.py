"""http_bridge/segment.py: the headers and media type Segment sends."""

from __future__ import annotations

import base64
import json
import re
import string
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from http_bridge.errors import BadRequest, Unauthorized, UnsupportedMediaType
from http_bridge.segment import (
    SETTINGS_PATTERN,
    api_key_from_authorization,
    check_media_type,
    decode_settings,
)

KEY = "inlet_0123456789abcdef_s3cr-et_xy"
ROOT = Path(__file__).resolve().parents[2]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Authorization: Basic base64(key:)


@pytest.mark.parametrize(
    "header",
    [
        f"Basic {b64(KEY.encode() + b':')}",  # exactly what Segment sends
        f"Basic {b64(KEY.encode())}",  # no colon
        f"Basic {b64(KEY.encode() + b':')}".rstrip("="),  # no padding
        f"basic {b64(KEY.encode() + b':')}",
        f"BASIC {b64(KEY.encode() + b':')}",
        f"  Basic   {b64(KEY.encode() + b':')}  ",
        f"Basic {b64(KEY.encode() + b':password')}",  # a password is ignored
        f"Basic {b64(KEY.encode() + b'::')}",
    ],
    ids=[
        "segment",
        "no-colon",
        "no-padding",
        "lowercase",
        "uppercase",
        "spaces",
        "password",
        "two-colons",
    ],
)
def test_api_key_is_read_from_basic_credentials(header: str) -> None:
    assert api_key_from_authorization(header) == KEY


def test_padding_was_actually_stripped_in_the_unpadded_case() -> None:
    encoded = b64(KEY.encode() + b":")
    assert encoded.endswith("=")
    assert api_key_from_authorization("Basic " + encoded.rstrip("=")) == KEY


def test_url_safe_base64_is_accepted() -> None:
    key = "ab?>"
    assert "/" in b64(key.encode() + b":")
    urlsafe = base64.urlsafe_b64encode(key.encode() + b":").decode()
    assert api_key_from_authorization(f"Basic {urlsafe}") == key


def test_non_ascii_utf8_key_is_decoded() -> None:
    assert api_key_from_authorization(f"Basic {b64('clé:'.encode())}") == "clé"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_authorization"),
        ("", "missing_authorization"),
        ("   ", "missing_authorization"),
        ("Bearer abc", "invalid_authorization"),
        (f"Bearer {b64(KEY.encode() + b':')}", "invalid_authorization"),
        (f"Digest {b64(KEY.encode() + b':')}", "invalid_authorization"),
        (b64(KEY.encode() + b":"), "invalid_authorization"),  # no scheme
        (f"Basic:{b64(KEY.encode() + b':')}", "invalid_authorization"),
        ("Basic !!!not-base64!!!", "invalid_authorization"),
        ("Basic a", "invalid_authorization"),  # impossible length
        ("Basic abc def", "invalid_authorization"),
        (f"Basic {b64(bytes([0xFF, 0xFE]) + b':')}", "invalid_authorization"),  # not UTF-8
        ("Basic Og==", "missing_api_key"),  # ":" – empty user name
        ("Basic Og", "missing_api_key"),
        (f"Basic {b64(b':password')}", "missing_api_key"),
        ("Basic", "missing_api_key"),
        ("Basic ", "missing_api_key"),
    ],
)
def test_unusable_authorization_is_unauthorized(header: str | None, code: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        api_key_from_authorization(header)
    error = caught.value
    assert error.code == code
    assert error.status == 401
    assert error.headers["WWW-Authenticate"].startswith("Basic ")
    assert error.message


def test_missing_authorization_message_says_what_to_send() -> None:
    with pytest.raises(Unauthorized) as caught:
        api_key_from_authorization(None)
    assert "Basic" in caught.value.message


# ---------------------------------------------------------------------------------------------
# X-Segment-Settings: base64(JSON object), exactly of the form openapi.yaml's pattern states

SETTINGS = b'{"apiKey":"k","region":"eu","flag":"??>"}'
SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())
HEADER = next(
    p for p in SPEC["paths"]["/segment"]["post"]["parameters"] if p["name"] == "X-Segment-Settings"
)
SPEC_PATTERN = re.compile(HEADER["schema"]["pattern"])


def accepted(header: str) -> bool:
    try:
        decode_settings(header)
    except BadRequest:
        return False
    return True


def encodings(data: bytes) -> list[str]:
    """`data` in every spelling the pattern admits: both alphabets, padding full, partial, none."""
    standard, urlsafe = b64(data), base64.urlsafe_b64encode(data).decode()
    bare = standard.rstrip("=")
    return [standard, urlsafe, bare, urlsafe.rstrip("="), bare + "=" * (len(standard) > len(bare))]


@pytest.mark.parametrize("header", [None, "", "   ", "\t"])
def test_absent_settings_decode_to_nothing(header: str | None) -> None:
    assert decode_settings(header) == b""


@pytest.mark.parametrize(
    "header",
    [*encodings(SETTINGS), f"  {b64(SETTINGS)}\t"],
    ids=["padded", "urlsafe", "unpadded", "urlsafe-unpadded", "half-padded", "spaces"],
)
def test_settings_are_base64_decoded(header: str) -> None:
    assert decode_settings(header) == SETTINGS


def test_settings_fixture_exercises_both_alphabets() -> None:
    assert "+" in b64(SETTINGS) or "/" in b64(SETTINGS)
    assert b64(SETTINGS).endswith("=")


def test_the_spec_states_the_pattern_the_decoder_checks() -> None:
    assert HEADER["schema"]["pattern"] == SETTINGS_PATTERN
    # Segment's own example header (partners/direct-destination.md) is of that form.
    assert decode_settings(HEADER["example"]) == b'{"customSettingOne":"custom setting value"}'


@pytest.mark.parametrize(
    "header",
    [
        "!!!",
        "not base64 at all",
        "a",
        "eyJh=Ijoi",
        '{"a": 1}',
        "é",
        "e30==",
        "e31=",
        b64(b"not json"),
        b64(b"[1]"),
        b64(b'"text"'),
        b64(b"null"),
        b64(b"{"),
        b64(b' {"a": 1}'),
        b64(b'{"a": 1}\n'),
        "e30=\n",
        "\x0be30=",
    ],
)
def test_settings_not_of_the_documented_form_are_a_bad_request(header: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_settings(header)
    assert caught.value.code == "invalid_settings"
    assert caught.value.status == 400
    assert "X-Segment-Settings" in caught.value.message
    assert not SPEC_PATTERN.fullmatch(header)


@pytest.mark.parametrize("text", [b"{not json}", b"{}{}", b'{"a": 1,}', b"{\xff}"])
def test_settings_of_the_form_that_are_not_json_are_dropped_not_refused(text: bytes) -> None:
    assert decode_settings(b64(text)) is None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=5), st.booleans())
@settings(max_examples=100)
def test_every_json_object_segment_can_send_is_accepted(
    values: dict[str, object], compact: bool
) -> None:
    # JSON.stringify's spelling, and Python's.
    text = json.dumps(values, separators=(",", ":") if compact else None).encode()
    for header in encodings(text):
        assert SPEC_PATTERN.fullmatch(header), header
        assert decode_settings(header) == text


@given(st.from_regex(SPEC_PATTERN, fullmatch=True))
@settings(max_examples=200)
def test_every_value_of_the_spec_pattern_is_accepted(header: str) -> None:
    assert accepted(header)


def _near_misses() -> st.SearchStrategy[str]:
    """Strings around the pattern's edge: encodings of anything, and of `{...}` edited."""
    alphabet = string.ascii_letters + string.digits + "+/-_=" + ' {}"\n\x0bé'
    spelled = st.binary(max_size=12).flatmap(
        lambda data: st.sampled_from(encodings(data) + encodings(b"{" + data + b"}"))
    )
    edited = st.tuples(spelled, st.integers(0, 20), st.sampled_from(alphabet), st.integers(0, 2))
    return st.one_of(
        spelled,
        edited.map(lambda e: e[0][: e[1]] + e[2] * e[3] + e[0][e[1] + 1 :]),
        st.text(alphabet, max_size=16),
        st.text(max_size=8),
    )


@given(_near_misses())
@settings(max_examples=600)
def test_the_decoder_accepts_exactly_the_spec_pattern(header: str) -> None:
    assert accepted(header) == bool(SPEC_PATTERN.fullmatch(header.strip(" \t"))), header


def test_the_values_schemathesis_generates_from_the_spec_are_accepted() -> None:
    operation = schemathesis.openapi.from_path(ROOT / "openapi.yaml")["/segment"]["POST"]
    sent = []

    @given(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(
        max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        header = case.headers.get("X-Segment-Settings") if case.headers else None
        if header:
            sent.append(header)
            assert accepted(header), header

    check()
    assert len(sent) >= 5  # the header was exercised


# ---------------------------------------------------------------------------------------------
# Content-Type


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
        "application/vnd.segment+json",
        "application/vnd.segment+json; charset=utf-8",
        "application/ld+json",
        " application/json ",
    ],
)
def test_json_media_types_are_accepted(content_type: str | None) -> None:
    check_media_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "application/json-seq",
        "application/octet-stream",
        "json",
        "; charset=utf-8",
    ],
)
def test_other_media_types_are_unsupported(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        check_media_type(content_type)
    assert caught.value.status == 415
    assert caught.value.code == "unsupported_media_type"
    assert "application/json" in caught.value.message


def test_unsupported_media_type_message_names_what_was_sent() -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        check_media_type("Text/Plain; charset=utf-8")
    assert "text/plain" in caught.value.message
