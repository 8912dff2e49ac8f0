"""service/timestamps.py: the date formats found in real Segment traffic, as µs since the epoch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.timestamps import format_micros, from_micros, parse_timestamp, to_micros

# 2020-05-09T23:54:49Z, the instant of Segment's partner delete example.
BASE_S = 1_589_068_489
# The range a datetime can hold, in µs since the epoch.
MIN_US = to_micros(datetime(1, 1, 1, tzinfo=UTC))
MAX_US = to_micros(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        # ISO-8601, UTC
        ("2020-05-09T23:54:49Z", BASE_S * 10**6),
        ("2020-05-09T23:54:49.209Z", BASE_S * 10**6 + 209_000),
        ("2020-05-09T23:54:49.209+00:00", BASE_S * 10**6 + 209_000),
        ("2020-05-09T23:54:49.209-00:00", BASE_S * 10**6 + 209_000),
        ("2020-05-09T23:54:49.209808Z", BASE_S * 10**6 + 209_808),
        ("2020-05-09t23:54:49z", BASE_S * 10**6),
        ("2020-05-09 23:54:49Z", BASE_S * 10**6),
        # offsets
        ("2020-05-10T01:54:49+02:00", BASE_S * 10**6),
        ("2020-05-10T01:54:49+0200", BASE_S * 10**6),
        ("2020-05-10T01:54:49+02", BASE_S * 10**6),
        ("2020-05-09T21:54:49-0200", BASE_S * 10**6),
        ("2020-05-09T18:24:49.5-05:30", BASE_S * 10**6 + 500_000),
        # no offset: UTC
        ("2020-05-09T23:54:49", BASE_S * 10**6),
        ("2020-05-09T23:54", (BASE_S - 49) * 10**6),
        # nanoseconds: truncated to microseconds
        ("2020-05-09T23:54:49.209808489Z", BASE_S * 10**6 + 209_808),
        ("2020-05-09T23:54:49.209808999+00:00", BASE_S * 10**6 + 209_808),
        # non-padded, from Segment's HTTP API docs
        ("2015-2-02T00:30:08.276Z", 1_422_837_008_276_000),
        ("2015-2-2T0:30:8.276Z", 1_422_837_008_276_000),
        ("2020-5-9 23:54:49.209 +0000", BASE_S * 10**6 + 209_000),
        ("2020-5-10T1:54:49+02:00", BASE_S * 10**6),
        # Go's time.String(), from partner delete requests
        ("2020-05-09 23:54:49.209808489 +0000 UTC m=+70366.298768264", BASE_S * 10**6 + 209_808),
        ("2020-05-09 23:54:49.209808489 +0000 UTC", BASE_S * 10**6 + 209_808),
        ("2020-05-09 23:54:49 +0000 UTC m=-1.5", BASE_S * 10**6),
        ("2020-05-10 01:54:49.209808489 +0200 m=+1.0", BASE_S * 10**6 + 209_808),
        ("2020-05-09 23:54:49 GMT", BASE_S * 10**6),
        # date only: midnight UTC
        ("2020-05-09", 1_588_982_400_000_000),
        ("2020-5-9", 1_588_982_400_000_000),
        # surrounding whitespace
        ("  2020-05-09T23:54:49Z ", BASE_S * 10**6),
        # before the epoch
        ("1969-12-31T23:59:59Z", -1_000_000),
    ],
)
def test_date_strings_are_parsed(text: str, expected_us: int) -> None:
    assert parse_timestamp(text) == expected_us


@pytest.mark.parametrize(
    ("number", "expected_us"),
    [
        (BASE_S, BASE_S * 10**6),  # epoch seconds
        (BASE_S + 0.209, BASE_S * 10**6 + 209_000),
        (BASE_S * 1000 + 209, BASE_S * 10**6 + 209_000),  # epoch milliseconds
        (float(BASE_S * 1000 + 209), BASE_S * 10**6 + 209_000),
        (0, 0),
        (-1, -1_000_000),
        (99_999_999_999, 99_999_999_999 * 10**6),  # largest number read as seconds
        (100_000_000_000, 100_000_000_000 * 10**3),  # smallest number read as ms
    ],
)
def test_epoch_numbers_are_seconds_or_milliseconds(number: float, expected_us: int) -> None:
    assert parse_timestamp(number) == expected_us


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        "",
        "   ",
        "garbage",
        "yesterday at noon",
        "2020-13-01T00:00:00Z",  # month 13
        "2020-02-30",  # no such day
        "2020-05-09T25:00:00Z",  # hour 25
        "2020-05-09T23:61:00Z",
        "20-05-09",
        "05/09/2020",
        "2020-05-09T23:54:49Z extra",
        "2020-05-09 23:54:49 +0200 CEST",
        "0000-01-01T00:00:00Z",  # year 0
        "2020-05-09T23:54:49Z" + " " * 60,  # too long to be a date
        "9" * 30,
        {"at": "2020-05-09"},
        ["2020-05-09"],
        10**30,  # far outside the datetime range
        -(10**30),
        1e300,
    ],
)
def test_non_dates_are_none(value: Any) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize("text", ["2020-01-01T00:00:00+99:99", "2020-01-01T00:00:00+24:00"])
def test_impossible_utc_offsets_are_rejected(text: str) -> None:
    assert parse_timestamp(text) is None


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("2020-1-1T23:59:00+23:59", to_micros(datetime(2020, 1, 1, tzinfo=UTC))),
        ("2020-1-1T00:00:00-23:59", to_micros(datetime(2020, 1, 1, 23, 59, tzinfo=UTC))),
        ("9999-12-31T23:59:59.999999Z", MAX_US),
        ("0001-01-01T00:00:00Z", MIN_US),
        ("0001-01-01T01:00:00+01:00", MIN_US),
    ],
)
def test_dates_at_the_edges_of_the_range_are_parsed(text: str, expected_us: int) -> None:
    assert parse_timestamp(text) == expected_us


@pytest.mark.parametrize("text", ["9999-12-31T23:00:00-23:59", "0001-01-01T00:00:00+01:00"])
def test_dates_outside_the_utc_range_are_not_dates(text: str) -> None:
    """In range as local time, but not in UTC: format_micros could not write it back."""
    assert parse_timestamp(text) is None


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (BASE_S * 10**6 + 209_808, "2020-05-09T23:54:49.209Z"),
        (BASE_S * 10**6 + 999, "2020-05-09T23:54:49.000Z"),  # sub-ms truncated
        (-1, "1969-12-31T23:59:59.999Z"),
        (-1_000_000, "1969-12-31T23:59:59.000Z"),
        (MAX_US, "9999-12-31T23:59:59.999Z"),
        (to_micros(datetime(1000, 1, 1, tzinfo=UTC)), "1000-01-01T00:00:00.000Z"),
    ],
)
def test_format_micros_writes_iso_with_milliseconds_and_z(micros: int, text: str) -> None:
    assert format_micros(micros) == text


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (MIN_US, "0001-01-01T00:00:00.000Z"),
        (to_micros(datetime(999, 12, 31, 12, tzinfo=UTC)), "0999-12-31T12:00:00.000Z"),
    ],
)
def test_format_micros_pads_years_below_1000_and_round_trips(micros: int, text: str) -> None:
    assert format_micros(micros) == text
    assert parse_timestamp(format_micros(micros)) == micros


@pytest.mark.parametrize(
    "micros", [0, 1_000, BASE_S * 10**6 + 209_000, -86_400_000_000, 253_402_300_799_999_000]
)
def test_format_micros_round_trips_at_millisecond_precision(micros: int) -> None:
    assert parse_timestamp(format_micros(micros)) == micros


def test_format_micros_round_trip_drops_only_sub_millisecond_digits() -> None:
    micros = BASE_S * 10**6 + 209_808
    assert parse_timestamp(format_micros(micros)) == micros - 808


def test_to_micros_takes_naive_datetimes_as_utc() -> None:
    naive = datetime(2020, 5, 9, 23, 54, 49)
    assert to_micros(naive) == to_micros(naive.replace(tzinfo=UTC)) == BASE_S * 10**6


def test_from_micros_inverts_to_micros() -> None:
    moment = datetime(2020, 5, 9, 23, 54, 49, 209_808, tzinfo=UTC)
    assert from_micros(to_micros(moment)) == moment
