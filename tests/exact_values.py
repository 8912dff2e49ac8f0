"""Trait values whose JSON text a float-based round trip would change, for the tests that
check a profile gives back what was sent (store, gRPC API, `inlet profile get`)."""

from __future__ import annotations

#: Trait key -> the value's JSON text, exactly as sent and as it must come back.
EXACT_TRAITS: dict[str, str] = {
    "count": "5",
    "negativeZero": "-0",
    "negativeZeroFloat": "-0.0",
    "half": "1.5",
    "trailingZero": "1.50",
    "exponent": "1e20",
    "upperExponent": "1E+20",
    "id19": "9007199254740993123",  # beyond 2^53: a double would end in ...3184
    "beyond64Bits": "123456789012345678901234567890",
    "belowInt64": "-9223372036854775809",
    "manyDigits": "0.1000000000000000055511151231257827",
    "underflow": "1e-400",
    "nested": '{"a":[1,2.50,{"b":-0}],"c":null,"d":"x","e":9007199254740993123}',
    "list": "[5,-0,1e20,9007199254740993123]",
    "text": '"5"',
    "flag": "true",
    "nothing": "null",
}


def identify_json(message_id: str, user: str, traits: dict[str, str] = EXACT_TRAITS) -> bytes:
    """An identify whose traits are the given JSON texts, written out verbatim."""
    return _event(f'"type":"identify","messageId":"{message_id}","userId":"{user}"', traits)


def group_json(
    message_id: str, user: str, group: str, traits: dict[str, str] = EXACT_TRAITS
) -> bytes:
    """A group call whose traits are the given JSON texts, written out verbatim."""
    fields = f'"type":"group","messageId":"{message_id}","userId":"{user}","groupId":"{group}"'
    return _event(fields, traits)


def _event(fields: str, traits: dict[str, str]) -> bytes:
    body = ",".join(f'"{key}":{text}' for key, text in traits.items())
    return f'{{{fields},"timestamp":"2026-01-01T00:00:00Z","traits":{{{body}}}}}'.encode()
