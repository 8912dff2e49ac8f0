"""The store's per-user statements use indexes: a delete or a profile look-up costs a few
index searches, not a scan of the account's events (which grew with every event stored
and once made each `delete` in the benchmark's mix take milliseconds)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from service.store import SqliteStore
from service.store.sqlite.eraser import _ERASE, _RECORDS, NOT_BEING_ERASED
from service.store.sqlite.events import _DELETED_AT, _LEAVE_TO_ERASER, _PRUNE_EVENTS
from service.store.sqlite.profiles import _PROFILE_COUNTS, LINKED_IDS, OF_IDS


@pytest.fixture
async def conn(tmp_path: Path) -> sqlite3.Connection:
    store = SqliteStore(tmp_path / "plans.db")
    await store.open()  # the real schema, migrations applied
    await store.close()
    return sqlite3.connect(tmp_path / "plans.db")


def plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]


IDS = '["u1", "a1"]'
RECORDS = '[[1, "u1", 100], [1, "a1", 100]]'  # the eraser's: [[account, id, before_seq]]
TABLE_SCAN = re.compile(r"SCAN (events|identity_links|traits|memberships|deleted_ids|e|l)\b")


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        (_ERASE, (RECORDS, 500)),
        (_RECORDS, ()),
        (_LEAVE_TO_ERASER, (1, 100, 1, IDS)),
        (_PROFILE_COUNTS, (1, IDS)),
        (
            f"SELECT seq FROM events WHERE account_id = ? AND {NOT_BEING_ERASED} ORDER BY seq",
            (1,),
        ),
        (
            f"SELECT seq FROM events WHERE account_id = ? AND {OF_IDS} ORDER BY seq",
            (1, IDS),
        ),
        (LINKED_IDS, (1, "u1")),
        (_DELETED_AT, (1, IDS)),
    ],
)
def test_per_user_statements_search_indexes(
    conn: sqlite3.Connection, sql: str, args: tuple[object, ...]
) -> None:
    steps = plan(conn, sql, args)
    assert not [s for s in steps if TABLE_SCAN.match(s)], steps


def test_pruning_reads_the_oldest_rows_in_table_order_and_stops(conn: sqlite3.Connection) -> None:
    """Its SCAN is the table in sequence order, ended by LIMIT: a run with nothing to
    delete reads a chunk of rows, never the whole table (no sort of it either)."""
    steps = plan(conn, _PRUNE_EVENTS, (500, 0))
    assert not [s for s in steps if "TEMP B-TREE" in s], steps
    assert "SEARCH events USING INTEGER PRIMARY KEY (rowid=?)" in steps, steps


@pytest.mark.parametrize(
    ("sql", "args"), [(_ERASE, (RECORDS, 500)), (_RECORDS, ()), (_PROFILE_COUNTS, (1, IDS))]
)
def test_erasing_and_counting_a_user_search_by_type(
    conn: sqlite3.Connection, sql: str, args: tuple[object, ...]
) -> None:
    """A user deleted N times has N delete events under their id: erasing them again, or
    counting their events, must not read those (quadratic in the deletes of one user)."""
    steps = plan(conn, sql, args)
    assert any("(account_id=? AND subject=? AND type=?" in s for s in steps), steps
