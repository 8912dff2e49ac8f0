"""Segment's request syntax: the Authorization and X-Segment-Settings headers, the media type.

Pure functions; the HTTP handler calls them and turns their errors into responses.
What Segment sends (segment-docs partners/direct-destination.md):
`Authorization: Basic base64(apiKey + ":")`, `X-Segment-Settings: base64(JSON object)`,
`Content-Type: application/json` (possibly with a vendor suffix or parameters).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import Final

import orjson

from http_bridge.errors import BadRequest, Unauthorized, UnsupportedMediaType
from service.keys import split_key

_JSON_MEDIA_TYPE: Final = re.compile(r"^application/(?:[\w.+-]+\+)?json$")


def _b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding; raise ValueError."""
    text = text.strip()
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


# Segment sends the same few header values over and over (one per customer), so
# the pure decoders below are memoised; errors are not cached (they raise).
def key_from_authorization(header: str | None) -> str:
    """The API key from `Bearer <key>` (internal callers, the debugger page) or Basic."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return api_key_from_authorization(header)


def key_id_of(header: str | None) -> str:
    """The public id of an Inlet key (`inlet_<id>_<secret>`) in an Authorization header,
    safe to log and show; "" if there is none."""
    try:
        parts = split_key(key_from_authorization(header))
    except Unauthorized:
        return ""
    return "" if parts is None else parts[0]


@functools.lru_cache(maxsize=4096)
def api_key_from_authorization(header: str | None) -> str:
    """The API key in `Basic base64(key:)`. The colon is optional (as Segment's API allows).

    Raises:
        Unauthorized: missing header, another scheme, undecodable credentials, empty key.
    """
    if not header or not header.strip():
        raise Unauthorized(
            "the Authorization header is missing: send `Basic base64(<api key>:)`",
            "missing_authorization",
        )
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized("the Authorization header must use the Basic scheme")
    try:
        decoded = _b64decode(credentials).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise Unauthorized("the Basic credentials are not valid base64 of UTF-8 text") from None
    api_key = decoded.partition(":")[0]
    if not api_key:
        raise Unauthorized("the API key (the Basic user name) is empty", "missing_api_key")
    return api_key


#: What `X-Segment-Settings` may hold, exactly (openapi.yaml states the same pattern): base64,
#: standard or URL-safe alphabet, padding optional, no stray bits, of a JSON object's text
#: from `{` to `}` with nothing around it; or nothing. A `{...}` text starts `e` + one of
#: [w-z0-9+/_-] once encoded and ends, by its length modulo 3, in `9`, `fQ` or `[HXn3]0`.
#: Segment's header (JSON.stringify, base64) always has this form. A regular expression
#: cannot say "JSON" but Schemathesis can check only what one says, so this is the rule.
SETTINGS_PATTERN: Final = (
    r"^(?:e30=?|e[w-z0-9+/_-](?:[BFJNRVZdhlptx159]9|[A-Za-z0-9+/_-]{2}"
    r"(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}[BFJNRVZdhlptx159]9|fQ={0,2}"
    r"|[A-Za-z0-9+/_-][HXn3]0=?)))?$"
)
_SETTINGS: Final = re.compile(SETTINGS_PATTERN)


@functools.lru_cache(maxsize=4096)
def decode_settings(header: str | None) -> bytes | None:
    """The JSON object in the X-Segment-Settings header, as text; b"" when there is none.

    None when the header has the form of SETTINGS_PATTERN but the text between the braces
    is not JSON: never Segment's, and not a reason to refuse a valid event (the caller
    stores it without settings and says so).

    Raises:
        BadRequest: any other value.
    """
    value = (header or "").strip(" \t")  # HTTP's optional whitespace
    if not value:
        return b""
    if not _SETTINGS.fullmatch(value):
        raise BadRequest(
            "the X-Segment-Settings header must be base64 of a JSON object "
            "(`{` to `}`, nothing around it)",
            "invalid_settings",
        )
    decoded = _b64decode(value)
    try:
        orjson.loads(decoded)
    except orjson.JSONDecodeError:
        return None
    return decoded


@functools.lru_cache(maxsize=256)
def check_media_type(content_type: str | None) -> None:
    """Accept JSON media types (`application/json`, `application/*+json`) or none at all.

    Raises:
        UnsupportedMediaType: anything else.
    """
    if not content_type:
        return
    media_type = content_type.partition(";")[0].strip().lower()
    if not _JSON_MEDIA_TYPE.match(media_type):
        # aiohttp decodes undecodable header bytes as surrogates: never echo them raw.
        shown = media_type[:60].encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise UnsupportedMediaType(
            f"the body must be application/json, not {shown or 'empty'}",
            "unsupported_media_type",
        )
