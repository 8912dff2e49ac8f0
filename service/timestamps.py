"""Lenient parsing of the date strings found in real Segment traffic.

The Spec says ISO-8601 in UTC, but delivered events also carry `+00:00` offsets,
microsecond and nanosecond fractions, non-zero-padded parts (`2015-2-02T00:30:08.276Z`,
from Segment's own HTTP API docs) and Go's `time.String()` output
(`2020-05-09 23:54:49.209808489 +0000 UTC m=+70366.298768264`, in partner delete
requests). Numbers are taken as Unix epoch seconds, or milliseconds when large.
Everything is normalised to integer microseconds since the epoch, UTC.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Final

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_NUMBER: Final = (int, float)
# Epoch numbers above this are milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD: Final = 100_000_000_000

_LENIENT: Final = re.compile(
    r"""^\s*
    (?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})
    (?:[T\s]+(?P<h>\d{1,2}):(?P<mi>\d{1,2})(?::(?P<s>\d{1,2})(?:[.,](?P<frac>\d+))?)?)?
    \s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?
    (?:\s*(?:UTC|GMT))?
    (?:\s+m=[+-][\d.]+)?      # Go's monotonic clock reading
    \s*$""",
    re.VERBOSE | re.IGNORECASE,
)


#: The dates Python (and a protobuf Timestamp) can hold: years 1-9999, UTC.
MIN_MICROS: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
MAX_MICROS: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)


def _in_range(micros: int) -> int | None:
    """`micros` if it is a date Python can represent in UTC (years 1-9999), else None."""
    return micros if MIN_MICROS <= micros <= MAX_MICROS else None


def now_us() -> int:
    """The current time, µs since the epoch."""
    return time.time_ns() // 1000


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_US


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def parse_timestamp(value: object) -> int | None:
    """Return `value` as microseconds since the epoch, or None if it is not a date.

    Accepts ISO-8601 strings in the variants above and epoch numbers. Booleans,
    objects and out-of-range dates are not dates.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, _NUMBER):
        return _from_epoch_number(value)
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        return _in_range(to_micros(datetime.fromisoformat(value)))
    except (ValueError, OverflowError):
        pass
    micros = _parse_lenient(value)
    return None if micros is None else _in_range(micros)


def _from_epoch_number(value: float) -> int | None:
    seconds = value / 1000 if abs(value) >= _MS_THRESHOLD else value
    try:
        return _in_range(to_micros(_EPOCH + timedelta(seconds=seconds)))
    except (OverflowError, ValueError):
        return None


def _parse_lenient(value: str) -> int | None:
    match = _LENIENT.match(value)
    if match is None:
        return None
    part = match.groupdict()
    frac = (part["frac"] or "0")[:6].ljust(6, "0")
    try:
        moment = datetime(
            int(part["y"]),
            int(part["mo"]),
            int(part["d"]),
            int(part["h"] or 0),
            int(part["mi"] or 0),
            int(part["s"] or 0),
            int(frac),
            tzinfo=UTC,
        )
        micros = to_micros(moment)
    except (ValueError, OverflowError):
        return None
    tz = part["tz"]
    if tz and tz.upper() != "Z":
        digits = tz[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours >= 24 or minutes >= 60:  # as Python's own parser: |offset| < 24 h
            return None
        offset = hours * 60 + minutes
        micros -= (1 if tz[0] == "+" else -1) * offset * 60_000_000
    return micros


def format_micros(micros: int) -> str:
    """ISO-8601 with millisecond precision and `Z`, as Segment writes dates."""
    moment = from_micros(micros)
    # Not strftime: glibc's %Y does not zero-pad years below 1000.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


_DURATION: Final = re.compile(r"\s*(\d+)\s*([dhms])\s*")
_DURATION_UNITS: Final = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration_s(text: str) -> int:
    """`30d`, `12h`, `15m`, `90s` → seconds; ValueError for anything else."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a duration such as 30d, 12h, 15m; got {text!r}")
    return int(match[1]) * _DURATION_UNITS[match[2]]
