"""ListEvents page tokens: pure functions.

A token is the last sequence of a page plus the direction it was read in, made
opaque (base64url) so callers do not build their own and the format can change.
Sequences follow the commit order and are never reused, so "after this sequence"
stays right while events are added: a page never shifts, nothing is lost or
repeated. (Deleted events simply no longer appear.)
"""

from __future__ import annotations

import base64
import binascii

from service.errors import InvalidArgument

_VERSION = "1"


def encode(sequence: int, newest_first: bool) -> str:
    text = f"{_VERSION}:{'n' if newest_first else 'o'}:{sequence}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(token: str, newest_first: bool) -> int:
    """The sequence in `token`, read in the same direction; InvalidArgument otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, direction, sequence = raw.split(":")
        value = int(sequence)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid("`page_token` is not a token this service issued") from None
    if version != _VERSION or direction not in "no" or value < 0:
        raise _invalid("`page_token` is not a token this service issued")
    if (direction == "n") != newest_first:
        raise _invalid("`page_token` was issued for the other `order`")
    return value


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, "invalid_page_token", "page_token")
