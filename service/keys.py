"""API keys: format, hashing and verification. Pure functions; storage is the store's job.

A key looks like `inlet_<key_id>_<secret>`: `key_id` (16 hex characters) is the
public handle used to look the key up, list and revoke it; `secret` is 256 random
bits (43 letters and digits). Only SHA-256(secret) is stored. A fast hash is right here (unlike for
passwords) because the secret is random and high-entropy: there is nothing to
brute-force. Comparison uses `hmac.compare_digest` so timing reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "inlet"
#: `operator` (all accounts, maintenance mode) is granted only by `inlet keys create`
#: on the database itself, or by another operator key.
SCOPES: Final = ("ingest", "read", "admin", "operator")
_KEY_ID_HEX: Final = 16
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits
_SECRET_LENGTH: Final = 43


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret_hash: bytes
    #: The full key, to be shown once.
    plaintext: str


def generate_key() -> NewKey:
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    # 43 base-62 characters = 256 bits. No `_` or `-`: the key stays one "word" when
    # double-clicked, and `_` only ever separates its parts.
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(_SECRET_LENGTH))
    return NewKey(key_id, hash_secret(secret), f"{PREFIX}_{key_id}_{secret}")


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def split_key(api_key: str) -> tuple[str, str] | None:
    """Return (key_id, secret) of a well-formed key, or None."""
    prefix, _, rest = api_key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or len(key_id) != _KEY_ID_HEX or not secret:
        return None
    if not _HEX_DIGITS.issuperset(key_id):
        return None
    return key_id, secret


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def parse_scopes(text: str) -> tuple[str, ...]:
    """`"ingest,read"` → ("ingest", "read"); raise ValueError on an unknown scope."""
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)}: expected {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError("at least one scope is needed")
    return scopes
