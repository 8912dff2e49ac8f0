"""Where each member of a JSON object is in the text: pure functions, no I/O.

A profile keeps each trait's value as the JSON text the customer sent. Parsing and
writing it again would not do: a parser reads numbers into ints and doubles (`-0` becomes
`0`, `1.50` becomes `1.5`, an integer beyond 64 bits loses digits) and orjson writes at
most 254 levels of nesting. So the value's text is cut out of the event instead.

The text must be valid JSON (every event was parsed by orjson before it gets here); the
scan checks nothing, and it is iterative, so any nesting orjson accepts is fine.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

_STRING: Final = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
# Anything that is neither a string nor a container: a number, true, false, null.
_SCALAR: Final = re.compile(r"[^,:\]} \t\n\r]++")
# Inside a container only brackets matter: the next one, skipping strings (which may
# hold brackets) in the same match. Possessive: a text without one fails at once.
_BRACKET: Final = re.compile(r'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+([\[\]{}])', re.DOTALL)
_OPEN: Final = re.compile(r"[ \t\n\r]*+\{[ \t\n\r]*+(\})?")
_KEY: Final = re.compile(r'("[^"\\]*+(?:\\.[^"\\]*+)*+")[ \t\n\r]*+:[ \t\n\r]*+', re.DOTALL)
_NEXT: Final = re.compile(r"[ \t\n\r]*+([,}])[ \t\n\r]*+")
_OPEN_ARRAY: Final = re.compile(r"[ \t\n\r]*+\[[ \t\n\r]*+(\])?")
_NEXT_ITEM: Final = re.compile(r"[ \t\n\r]*+([,\]])[ \t\n\r]*+")


def value_end(text: str, start: int) -> int:
    """The end of the JSON value that begins at `text[start]`."""
    first = text[start]
    if first == '"':
        return _match(_STRING, text, start).end()
    if first != "{" and first != "[":
        return _match(_SCALAR, text, start).end()
    depth, position = 0, start
    while True:
        # match, not finditer: a search would try again from every later character.
        position = _match(_BRACKET, text, position).end()
        if text[position - 1] in "{[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return position


def object_members(text: str, start: int = 0) -> list[tuple[str, int, int]]:
    """(key, value start, value end) of each member of the JSON object at `start` (or
    after white space there), in the order written, repeated keys included."""
    opening = _match(_OPEN, text, start)
    members: list[tuple[str, int, int]] = []
    if opening.group(1) is not None:  # {}
        return members
    position = opening.end()
    while True:
        key = _match(_KEY, text, position)
        end = value_end(text, key.end())
        members.append((orjson.loads(key.group(1)), key.end(), end))
        separator = _match(_NEXT, text, end)
        if separator.group(1) == "}":
            return members
        position = separator.end()


def array_items(text: str, start: int = 0) -> list[tuple[int, int]]:
    """(start, end) of each item of the JSON array at `start` (or after white space
    there), in order."""
    opening = _match(_OPEN_ARRAY, text, start)
    items: list[tuple[int, int]] = []
    if opening.group(1) is not None:  # []
        return items
    position = opening.end()
    while True:
        end = value_end(text, position)
        items.append((position, end))
        separator = _match(_NEXT_ITEM, text, end)
        if separator.group(1) == "]":
            return items
        position = separator.end()


def _match(pattern: re.Pattern[str], text: str, position: int) -> re.Match[str]:
    found = pattern.match(text, position)
    if found is None:
        raise ValueError(f"not valid JSON at character {position}")
    return found
