"""service/json_text.py: where each member of a JSON object is in the text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.json_text import array_items, object_members, value_end
from tests.fuzzing import FUZZ

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # Brackets, quotes and backslashes inside strings must not confuse the scan.
    | st.text(alphabet=st.sampled_from('ab{}[]",:\\ \n\u00e9\U0001f600'), max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_LAYOUTS = st.sampled_from(
    [
        {},
        {"separators": (",", ":")},
        {"indent": 2},
        {"indent": "\t", "separators": (" ,\r\n", " :  ")},
        {"ensure_ascii": False, "separators": (",", ":")},
    ]
)


@FUZZ
@given(body=st.dictionaries(st.text(max_size=8), _VALUES, max_size=6), layout=_LAYOUTS)
def test_each_member_is_found_whatever_the_layout(body: dict[str, Any], layout: Any) -> None:
    text = "  " + json.dumps(body, **layout) + "\n"
    members = object_members(text)
    assert [key for key, _, _ in members] == list(body)
    assert {key: json.loads(text[start:end]) for key, start, end in members} == body


@FUZZ
@given(items=st.lists(_VALUES, max_size=6), layout=_LAYOUTS)
def test_each_item_of_an_array_is_found_whatever_the_layout(items: list[Any], layout: Any) -> None:
    text = '{"batch": ' + json.dumps(items, **layout) + "}"
    [(_, start, _)] = object_members(text)
    assert [json.loads(text[a:b]) for a, b in array_items(text, start)] == items


def test_repeated_keys_are_all_listed_in_order() -> None:
    text = '{"a":1,"b":[2],"a":{"c":3}}'
    assert [(key, text[start:end]) for key, start, end in object_members(text)] == [
        ("a", "1"),
        ("b", "[2]"),
        ("a", '{"c":3}'),
    ]


def test_escaped_keys_are_decoded() -> None:
    text = '{"tr\\u0061its":{}, "q\\"k":-0}'
    assert [key for key, _, _ in object_members(text)] == ["traits", 'q"k']
    assert object_members(text, object_members(text)[0][1]) == []


def test_nesting_deeper_than_any_recursive_parser_goes() -> None:
    depth = 100_000
    text = '{"deep":' + "[" * depth + "]" * depth + ',"next":1e400}'
    ((_, start, end), (_, next_start, next_end)) = object_members(text)
    assert (start, end) == (8, 8 + 2 * depth)
    assert text[next_start:next_end] == "1e400"


@pytest.mark.parametrize("text", ['{"a":[1,2', '{"a":"open', "[" * 10_000 + "x" * 100_000])
def test_text_that_is_not_json_fails_fast(text: str) -> None:
    with pytest.raises(ValueError):
        value_end(text, 0) if text.startswith("[") else object_members(text)
