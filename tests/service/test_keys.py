"""service/keys.py: API key format, hashing, verification and scope lists."""

from __future__ import annotations

import asyncio
import hashlib
import re

import pytest

from service.auth import Authenticator
from service.errors import Unauthenticated
from service.keys import SCOPES, generate_key, hash_secret, parse_scopes, secret_matches, split_key
from service.store import KeyRecord

KEY_ID = "0123456789abcdef"


def test_generated_key_splits_back_into_its_id_and_a_matching_secret() -> None:
    new = generate_key()
    assert new.plaintext.startswith(f"inlet_{new.key_id}_")
    parts = split_key(new.plaintext)
    assert parts is not None
    key_id, secret = parts
    assert key_id == new.key_id
    assert secret_matches(secret, new.secret_hash)


def test_generated_key_id_is_16_lowercase_hex_characters() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", generate_key().key_id)


def test_generated_keys_are_unique() -> None:
    keys = [generate_key() for _ in range(20)]
    assert len({k.plaintext for k in keys}) == 20
    assert len({k.key_id for k in keys}) == 20
    assert len({k.secret_hash for k in keys}) == 20


def test_only_a_sha256_of_the_secret_is_kept() -> None:
    new = generate_key()
    _, secret = split_key(new.plaintext) or ("", "")
    assert new.secret_hash == hashlib.sha256(secret.encode()).digest()


def test_secret_does_not_match_another_keys_hash() -> None:
    first, second = generate_key(), generate_key()
    _, first_secret = split_key(first.plaintext) or ("", "")
    assert not secret_matches(first_secret, second.secret_hash)


@pytest.mark.parametrize(
    "wrong", ["", "x", "s3cret ", " s3cret", "S3CRET", "s3cre", "s3crett", "s3cret\x00"]
)
def test_secret_matches_only_the_exact_secret(wrong: str) -> None:
    stored = hash_secret("s3cret")
    assert secret_matches("s3cret", stored)
    assert not secret_matches(wrong, stored)


def test_secret_with_lone_surrogate_is_compared_not_crashed() -> None:
    assert not secret_matches("\udcff", hash_secret("s3cret"))


@pytest.mark.parametrize(
    ("api_key", "expected"),
    [
        (f"inlet_{KEY_ID}_secret", (KEY_ID, "secret")),
        # everything after the id is the secret, whatever it contains
        (f"inlet_{KEY_ID}_se_cr-et_", (KEY_ID, "se_cr-et_")),
        (f"inlet_{KEY_ID}__", (KEY_ID, "_")),
    ],
)
def test_split_key(api_key: str, expected: tuple[str, str]) -> None:
    assert split_key(api_key) == expected


@pytest.mark.parametrize(
    "api_key",
    [
        "",
        "inlet",
        "inlet_",
        f"inlet_{KEY_ID}",
        f"inlet_{KEY_ID}_",  # no secret
        "inlet_0123456789abcde_secret",  # 15-character id
        "inlet_0123456789abcdef0_secret",  # 17-character id
        f"INLET_{KEY_ID}_secret",
        f"other_{KEY_ID}_secret",
        f"inlet-{KEY_ID}-secret",
        f"_inlet_{KEY_ID}_secret",
        f" inlet_{KEY_ID}_secret",
        "secret",
    ],
)
def test_malformed_keys_split_to_none(api_key: str) -> None:
    assert split_key(api_key) is None


@pytest.mark.parametrize("key_id", ["zzzzzzzzzzzzzzzz", "0123456789abcde!", "0123456789abcdeé"])
def test_key_with_a_non_hex_id_splits_to_none(key_id: str) -> None:
    assert split_key(f"inlet_{key_id}_secret") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ingest", ("ingest",)),
        ("ingest,read", ("ingest", "read")),
        ("admin,ingest,read", ("admin", "ingest", "read")),
        (" read , ingest ", ("read", "ingest")),
        ("ingest,ingest,read,ingest", ("ingest", "read")),
        ("ingest,,read,", ("ingest", "read")),
    ],
)
def test_parse_scopes_keeps_order_and_drops_duplicates_and_blanks(
    text: str, expected: tuple[str, ...]
) -> None:
    assert parse_scopes(text) == expected


def test_every_known_scope_parses() -> None:
    assert parse_scopes(",".join(SCOPES)) == SCOPES == ("ingest", "read", "admin", "operator")


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_parse_scopes_rejects_an_empty_list(text: str) -> None:
    with pytest.raises(ValueError, match="at least one scope"):
        parse_scopes(text)


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("write", "write"),
        ("ingest,write", "write"),
        ("read,superuser,ingest", "superuser"),
        ("Ingest", "Ingest"),
        ("ingest read", "ingest read"),
    ],
)
def test_parse_scopes_rejects_unknown_scopes_by_name(text: str, unknown: str) -> None:
    with pytest.raises(ValueError, match="unknown scope") as caught:
        parse_scopes(text)
    assert unknown in str(caught.value)
    assert "ingest, read, admin" in str(caught.value)


async def test_a_lookup_racing_a_revocation_does_not_recache_the_old_record() -> None:
    release = asyncio.Event()
    new = generate_key()

    class SlowStore:
        revoked = False

        async def get_key(self, key_id: str) -> object:
            revoked = self.revoked  # the row as read before the revocation committed
            await release.wait()
            return KeyRecord(
                new.key_id,
                1,
                "acme",
                False,
                ("ingest",),
                "",
                new.secret_hash,
                0,
                None,
                1 if revoked else None,
            )

    store = SlowStore()
    auth = Authenticator(store, ttl_s=60)  # type: ignore[arg-type]
    racing = asyncio.create_task(auth.authenticate(new.plaintext, "ingest"))
    await asyncio.sleep(0)
    store.revoked = True
    auth.invalidate(new.key_id)  # the revocation lands while the look-up is in flight
    release.set()
    await racing  # that one call may still see the old record...
    with pytest.raises(Unauthenticated):  # ...but nothing caches it
        await auth.authenticate(new.plaintext, "ingest")


def test_generated_secrets_are_letters_and_digits_only() -> None:
    # A `_` in the secret once made `key.split("_")` cut keys apart in callers.
    for _ in range(300):
        secret = generate_key().plaintext.split("_", 2)[2]
        assert len(secret) == 43 and secret.isalnum() and secret.isascii()
