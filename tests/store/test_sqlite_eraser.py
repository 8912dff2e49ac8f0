"""SQLite's eraser: a delete erases its user's profile at once and leaves the events to
the eraser, which erases the deletes of a moment together (service/store/sqlite/eraser.py).

What a partner relies on: from the delete's 2xx on, no read returns the user's earlier
events, and they leave the file soon after, also when the process stops or dies first.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from service.store.base import EventQuery
from service.store.sqlite import SqliteStore
from service.store.sqlite.schema import MIGRATIONS, migrate
from tests.store.test_conformance import track, write
from tests.waiting import eventually, settle

LONG_S = 60.0  # a gather no test waits out


async def opened(path: Path, *, gather_s: float = LONG_S, poll_s: float = LONG_S) -> SqliteStore:
    store = SqliteStore(path)
    store.erase_gather_s = gather_s
    store.erase_poll_s = poll_s
    await store.open()
    return store


def on_disk(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What the file holds, read by a connection of its own (as another process)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


GONE_TRACKS = "SELECT message_id FROM events WHERE subject = 'gone' AND type = 'track' ORDER BY seq"


async def test_reads_leave_out_what_waits_to_be_erased_and_the_eraser_erases_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "inlet.db"
    store = await opened(path)
    try:
        acme = (await store.ensure_account("acme")).id
        await store.write_events([write(acme, track(f"t-{i}", user="gone")) for i in range(5)])
        # In one group: the user's event before the delete (erased with the user), another
        # user's (untouched), the delete, the user coming back after it (kept).
        results = await store.write_events(
            [
                write(acme, track("before", user="gone")),
                write(acme, track("kept", user="stays")),
                write(acme, {"type": "delete", "messageId": "del-1", "userId": "gone"}),
                write(acme, track("after", user="gone")),
            ]
        )
        assert all(isinstance(seq, int) for seq in results)
        # Still in the file, waiting for the gather; no read returns them.
        assert len(on_disk(path, GONE_TRACKS)) == 7
        history = await store.list_events(EventQuery(account_id=acme))
        assert [e.message_id for e in history] == ["kept", "del-1", "after"]
        assert await store.count_events(acme) == 3
        assert await store.get_event_payload(acme, "before") is None
        profile = await store.get_profile(acme, "gone")
        assert profile is not None and profile.event_counts == {"track": 1}
        with caplog.at_level(logging.INFO, logger="service.store.sqlite.eraser"):
            await store.wait_erased()
        assert on_disk(path, GONE_TRACKS) == [("after",)]
        # Named as ingest named it: the delete's sequence number and account.
        assert f"deletion {results[2]} in account {acme} erased: 6 events" in caplog.text
        assert on_disk(path, "SELECT erased_events FROM deletions") == [(6,)]
        assert on_disk(path, "SELECT count(*) FROM erasing") == [(0,)]
    finally:
        await store.close()


async def test_deletes_committed_close_together_are_erased_in_one_transaction(
    tmp_path: Path,
) -> None:
    """A burst of deletes costs one erasure transaction: the ones committed while the
    first gathers join it. A process that stops meanwhile erases them before it closes."""
    path = tmp_path / "inlet.db"
    store = await opened(path)
    try:
        acme = (await store.ensure_account("acme")).id
        users = ["u1", "u2", "u3"]
        await store.write_events([write(acme, track(f"t-{user}", user=user)) for user in users])
        for user in users:
            await store.write_events(
                [write(acme, {"type": "delete", "messageId": f"del-{user}", "userId": user})]
            )
        assert store.eraser is not None
        before = store.eraser.passes
    finally:
        await store.close()  # within the gather
    assert store.eraser.passes == before + 1 and store.eraser.erased == 3
    assert on_disk(path, "SELECT count(*) FROM events WHERE type = 'track'") == [(0,)]
    assert on_disk(path, "SELECT erased_events FROM deletions") == [(1,), (1,), (1,)]


def leave_a_deletion(path: Path, account: int, user: str) -> None:
    """What a process killed within the gather leaves: a delete committed, its user's
    events still in the file (as another process, on a connection of its own)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        seq = conn.execute("SELECT max(seq) + 1 FROM events").fetchone()[0]
        deletion = conn.execute(
            "INSERT INTO deletions (account_id, user_id, message_id, requested_at_us, "
            "erased_ids, erased_events, deleted_at_us) VALUES (?, ?, ?, 0, 1, 0, 0)",
            (account, user, f"del-{user}"),
        ).lastrowid
        conn.execute(
            "INSERT INTO erasing (account_id, id, before_seq, deletion_id) VALUES (?, ?, ?, ?)",
            (account, user, seq, deletion),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_what_a_killed_process_left_to_erase_is_erased_by_a_sibling_and_at_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inlet.db"
    no_tracks = [(0,)]
    tracks = "SELECT count(*) FROM events WHERE type = 'track'"
    # A sibling worker, running: its poll finds the records.
    store = await opened(path, poll_s=0.01)
    try:
        acme = (await store.ensure_account("acme")).id
        await store.write_events([write(acme, track("t-1", user="u1"))])
        leave_a_deletion(path, acme, "u1")
        await eventually(lambda: on_disk(path, tracks) == no_tracks, what="the poll's erasure")
        await store.write_events([write(acme, track("t-2", user="u2"))])
    finally:
        await store.close()
    # The next start, polling seldom: it erases them at once.
    leave_a_deletion(path, acme, "u2")
    store = await opened(path)
    try:
        await eventually(lambda: on_disk(path, tracks) == no_tracks, what="the start's erasure")
        assert on_disk(path, "SELECT erased_events FROM deletions") == [(1,), (1,)]
    finally:
        await store.close()


async def test_a_long_history_is_erased_over_several_transactions(tmp_path: Path) -> None:
    """Ingest waits for each erasure transaction: a user with more events than one may
    erase (`erase_max_events`) is erased over several, each deletion counted whole."""
    path = tmp_path / "inlet.db"
    store = SqliteStore(path)
    store.erase_gather_s = store.erase_poll_s = LONG_S
    store.erase_max_events = 3
    await store.open()
    try:
        acme = (await store.ensure_account("acme")).id
        await store.write_events([write(acme, track(f"a-{i}", user="long")) for i in range(10)])
        await store.write_events([write(acme, track(f"b-{i}", user="short")) for i in range(2)])
        for user in ("long", "short"):
            await store.write_events(
                [write(acme, {"type": "delete", "messageId": f"del-{user}", "userId": user})]
            )
        assert store.eraser is not None
        before = store.eraser.passes
        assert await store.list_events(EventQuery(account_id=acme, types=("track",))) == []
        await store.wait_erased()
        # 3 + 3 + 3, then the last of the long one's with the short one's two.
        assert store.eraser.passes - before == 4
    finally:
        await store.close()
    assert on_disk(path, "SELECT count(*) FROM events WHERE type = 'track'") == [(0,)]
    assert on_disk(path, "SELECT user_id, erased_events FROM deletions") == [
        ("long", 10),
        ("short", 2),
    ]


async def test_a_deletion_of_a_user_never_seen_leaves_the_eraser_nothing(tmp_path: Path) -> None:
    """Segment passes on deletions of every user of a workspace, most of them never seen
    by a given destination: those are recorded, and cost no erasure transaction."""
    path = tmp_path / "inlet.db"
    store = await opened(path)
    try:
        acme = (await store.ensure_account("acme")).id
        await store.write_events(
            [write(acme, {"type": "delete", "messageId": "del-1", "userId": "stranger"})]
        )
        assert store.eraser is not None
        before = store.eraser.passes
        assert on_disk(path, "SELECT count(*) FROM erasing") == [(0,)]
        await store.wait_erased()
        assert store.eraser.passes == before  # not even an empty write transaction
    finally:
        await store.close()
    assert on_disk(path, "SELECT user_id, erased_events FROM deletions") == [("stranger", 0)]


async def test_migrating_a_file_from_before_the_eraser_warns_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`inlet migrate` opens the store without migrating, then migrates: the eraser, whose
    table the old file lacks, has no business running meanwhile."""
    path = tmp_path / "inlet.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:5])
    conn.close()
    store = SqliteStore(path)
    store.erase_poll_s = 0.0  # would look at once, and again, if it ran
    with caplog.at_level(logging.WARNING):
        await store.open(migrate=False)
        try:
            await settle()
            assert await store.migrate() == (5, len(MIGRATIONS))
        finally:
            await store.close()
    assert store.eraser is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
