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


@functools.lru_cache(maxsize=4096)
def decode_settings(header: str | None) -> bytes:
    """The X-Segment-Settings header, base64-decoded (the core checks it is a JSON object).

    Raises:
        BadRequest: the header is not base64.
    """
    if header is None or not header.strip():
        return b""
    try:
        return _b64decode(header)
    except ValueError:
        raise BadRequest(
            "the X-Segment-Settings header is not valid base64", "invalid_settings"
        ) from None


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
