"""http_bridge/segment.py: the headers and media type Segment sends."""

from __future__ import annotations

import base64

import pytest

from http_bridge.errors import BadRequest, Unauthorized, UnsupportedMediaType
from http_bridge.segment import api_key_from_authorization, check_media_type, decode_settings

KEY = "inlet_0123456789abcdef_s3cr-et_xy"


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
    ids=["segment", "no-colon", "no-padding", "lowercase", "uppercase", "spaces", "password",
         "two-colons"],
)  # fmt: skip
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
# X-Segment-Settings: base64(JSON object)

SETTINGS = b'{"apiKey":"k","region":"eu","flag":"??>"}'


@pytest.mark.parametrize("header", [None, "", "   "])
def test_absent_settings_decode_to_nothing(header: str | None) -> None:
    assert decode_settings(header) == b""


@pytest.mark.parametrize(
    "header",
    [
        b64(SETTINGS),
        b64(SETTINGS).rstrip("="),
        base64.urlsafe_b64encode(SETTINGS).decode(),
        base64.urlsafe_b64encode(SETTINGS).decode().rstrip("="),
        f"  {b64(SETTINGS)}  ",
    ],
    ids=["padded", "unpadded", "urlsafe", "urlsafe-unpadded", "spaces"],
)
def test_settings_are_base64_decoded(header: str) -> None:
    assert decode_settings(header) == SETTINGS


def test_settings_fixture_exercises_both_alphabets() -> None:
    assert "+" in b64(SETTINGS) or "/" in b64(SETTINGS)
    assert b64(SETTINGS).endswith("=")


def test_settings_that_are_base64_but_not_json_are_passed_on_for_the_core() -> None:
    assert decode_settings(b64(b"not json")) == b"not json"


@pytest.mark.parametrize("header", ["!!!", "not base64 at all", "a", "eyJh=Ijoi", '{"a": 1}', "é"])
def test_settings_that_are_not_base64_are_a_bad_request(header: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_settings(header)
    assert caught.value.code == "invalid_settings"
    assert caught.value.status == 400
    assert "X-Segment-Settings" in caught.value.message


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
