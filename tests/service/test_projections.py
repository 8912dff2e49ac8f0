"""service/projections.py: the trait values a profile keeps are the JSON sent."""

from __future__ import annotations

import orjson
import pytest

from service.projections import USER, project
from service.validation import canonicalise
from tests.exact_values import EXACT_TRAITS, identify_json


def trait_texts(raw: bytes) -> dict[str, bytes]:
    projection = project(canonicalise(raw, received_at_us=1))
    assert all(t.subject_kind == USER and t.subject_id == "u1" for t in projection.traits)
    return {t.key: t.value for t in projection.traits}


def test_numbers_keep_the_text_they_were_sent_in() -> None:
    texts = trait_texts(identify_json("m", "u1"))
    assert texts == {key: text.encode() for key, text in EXACT_TRAITS.items()}


@pytest.mark.parametrize(
    "traits",
    [
        {"count": "5", "email": '"a@b.c"'},  # nothing orjson would change
        {"count": "5", "price": "9.90"},  # a float among them
        {"zero": "0", "other": "-0"},  # a `-0` somewhere
    ],
    ids=["exact", "float", "negative-zero"],
)
def test_every_trait_is_kept_whichever_way_it_is_read(traits: dict[str, str]) -> None:
    assert trait_texts(identify_json("m", "u1", traits)) == {
        key: text.encode() for key, text in traits.items()
    }


def test_the_traits_validation_chose_and_their_last_repeated_keys_win() -> None:
    # An exact `traits` wins over a look-alike, wherever it is; a repeated key counts once,
    # with its last value, and reserved spellings fold into one trait (the last wins).
    raw = (
        b'{"Traits":{"x":1.5},"type":"identify","userId":"u1",'
        b'"traits":{"a":1.0,"b":2,"a":2.50,"First Name":"A","firstName":1e2}}'
    )
    assert trait_texts(raw) == {"a": b"2.50", "b": b"2", "firstName": b"1e2"}
    assert list(trait_texts(raw)) == ["a", "b", "firstName"]


def test_white_space_and_escapes_inside_a_value_are_kept() -> None:
    raw = b'{"type":"identify","userId":"u1","traits": { "a" : [ 1.0 , "\\u00e9" ] } }'
    assert trait_texts(raw) == {"a": b'[ 1.0 , "\\u00e9" ]'}


@pytest.mark.parametrize("depth", [300, 1_000])
def test_values_nested_deeper_than_orjson_writes_are_stored(depth: int) -> None:
    nested = "[" * depth + "5" + "]" * depth
    texts = trait_texts(identify_json("m", "u1", {"deep": nested, "n": "1"}))
    assert texts == {"deep": nested.encode(), "n": b"1"}
    assert orjson.loads(texts["deep"]) is not None
