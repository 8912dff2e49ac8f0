"""What only PostgreSQL has to get right: several cores committing at once.

Cursors: transactions on different cores commit in any order, so a seq drawn from the
sequence can become visible before a smaller one; readers stop at the feed horizon,
so a subscriber's cursor never passes a number still to be committed. Wake-ups: a commit on one core
must wake the streams of another (NOTIFY), also after the database restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from service.config import CoreConfig
from service.errors import StoreUnavailable
from service.feed import Feed
from service.server import start_core
from service.store.base import SUPPRESSED, EventQuery, EventWrite, StoredRecord, WriteResult
from service.store.postgres import PostgresOptions, PostgresStore, is_transient
from service.store.postgres import schema as pg_schema
from service.store.postgres.eraser import _ERASE_EVENTS
from service.store.postgres.events import _WRITE_EVENTS
from service.store.postgres.profiles import PROFILE_COUNTS
from service.store.postgres.projected import LINKED_IDS
from tests.store.test_conformance import at, identify, track, write
from tests.waiting import eventually

LONG = 10.0
T = TypeVar("T")


async def held_before_commit(
    store: PostgresStore, writes: list[EventWrite]
) -> tuple[asyncio.Task[list[WriteResult]], asyncio.Event]:
    """`writes` on `store`, its transaction held just before COMMIT until the event is set."""
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        store.before_commit = None
        held.set()
        await release.wait()

    store.before_commit = hold
    task = asyncio.create_task(store.write_events(writes))
    await asyncio.wait_for(held.wait(), LONG)
    return task, release


async def test_a_transaction_held_open_on_one_core_does_not_delay_a_commit_on_another(
    cores: tuple[PostgresStore, PostgresStore],
) -> None:
    """Commits of different cores are concurrent, and readers still never skip: the
    transaction that drew the smaller number commits last, and a pager and a stream
    both see the two events in one order, none missing."""
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    # Core one's transaction has drawn its number and written its row, and is held
    # just before COMMIT.
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        held.set()
        await release.wait()

    one.before_commit = hold
    first = asyncio.create_task(one.write_events([write(acme, track("earlier"))]))
    await asyncio.wait_for(held.wait(), LONG)
    stream = Feed(two, poll_s=LONG).follow(acme, after=0)
    streamed = asyncio.create_task(_take(stream, 2))
    # Core two commits while core one's transaction is open (it used to wait for it).
    (later,) = await asyncio.wait_for(two.write_events([write(acme, track("later"))]), LONG)
    assert later is not None
    # Readers stop below the open transaction's number: a page, "now", the stream.
    assert await two.list_events(EventQuery(acme, after=0)) == []
    assert await two.list_events(EventQuery(acme, newest_first=True)) == []
    now = await two.latest_sequence()
    assert not streamed.done()
    release.set()
    (earlier,) = await asyncio.wait_for(first, LONG)
    assert isinstance(earlier, int) and isinstance(later, int) and now < earlier < later
    page = await two.list_events(EventQuery(acme, after=now))
    assert [r.message_id for r in page] == ["earlier", "later"]
    assert [r.message_id for r in await asyncio.wait_for(streamed, LONG)] == ["earlier", "later"]


async def test_a_core_killed_in_the_middle_of_a_transaction_leaves_no_gap_and_no_stuck_reader(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    # Another core, in a process of its own, draws a number and stops before COMMIT.
    core = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HELD_CORE,
        pg_dsn,
        str(acme),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert core.stdout is not None
        line = await asyncio.wait_for(core.stdout.readline(), LONG)
        assert line == b"held\n", line
        # The stream's slow poll is far longer than the test may take: only the
        # horizon's re-read can move it once the killed core's transaction is gone.
        stream = Feed(one, poll_s=600).follow(acme, after=0)
        streamed = asyncio.create_task(_take(stream, 1))
        (after,) = await two.write_events([write(acme, track("after"))])
        assert await one.list_events(EventQuery(acme, after=0)) == []  # held back
        core.kill()
        await core.wait()
        (seen,) = await asyncio.wait_for(streamed, LONG)
        assert (seen.message_id, seen.seq) == ("after", after)
        page = await one.list_events(EventQuery(acme, after=0))
        assert [r.message_id for r in page] == ["after"]  # the killed one never existed
    finally:
        if core.returncode is None:
            core.kill()
            await core.wait()


# A core whose ingest transaction stops just before COMMIT, for ever: kill -9 ends it.
_HELD_CORE = """
import asyncio, sys
from service.store.base import EventWrite
from service.store.postgres import PostgresOptions, PostgresStore
from tests.store.test_conformance import track, write

async def main():
    store = PostgresStore(sys.argv[1], PostgresOptions(pool_size=2))
    await store.open(migrate=False)

    async def hold():
        print("held", flush=True)
        await asyncio.Event().wait()

    store.before_commit = hold
    await store.write_events([write(int(sys.argv[2]), track("killed"))])

asyncio.run(main())
"""


async def _take(stream: AsyncIterator[StoredRecord], count: int) -> list[StoredRecord]:
    taken: list[StoredRecord] = []
    async for record in stream:
        taken.append(record)
        if len(taken) == count:
            break
    return taken


async def test_a_core_frozen_in_the_middle_of_a_transaction_holds_readers_back_only_so_long(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    """A frozen core (SIGSTOP, a machine gone without closing its connection) keeps its
    transaction open: the server ends the session once it has been idle in it for
    idle_transaction_timeout_s, and readers go on."""
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    frozen = PostgresStore(pg_dsn, PostgresOptions(pool_size=2, idle_transaction_timeout_s=1.0))
    await frozen.open(migrate=False)
    try:
        holding, release = await held_before_commit(frozen, [write(acme, track("frozen"))])
        try:
            (after,) = await two.write_events([write(acme, track("after"))])
            assert await one.list_events(EventQuery(acme, after=0)) == []  # held back
            stream = Feed(one, poll_s=600).follow(acme, after=0)
            (seen,) = await asyncio.wait_for(_take(stream, 1), LONG)
            assert (seen.message_id, seen.seq) == ("after", after)
        finally:
            release.set()
        with pytest.raises(StoreUnavailable):  # its session was ended: never acknowledged
            await asyncio.wait_for(holding, LONG)
        assert await one.get_event_payload(acme, "frozen") is None
    finally:
        await frozen.close()


async def test_a_database_of_the_counter_schemas_migrates_and_cursors_keep_their_place(
    pg_dsn: str,
) -> None:
    """Schemas 1 and 2 numbered events from a one-row counter. After the migration numbers go
    on from it (a cursor a client holds still points where it did), and a core of the
    old version still running gets a transient error (503: Segment retries), rather
    than numbering events twice."""
    old = await asyncpg.connect(pg_dsn)
    try:
        async with old.transaction():
            await old.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            for script in pg_schema.MIGRATIONS[:2]:  # schema 2: numbered by the counter
                await old.execute(script)
            await old.execute("INSERT INTO schema_version VALUES (2)")
            acme = await old.fetchval(
                "INSERT INTO accounts (name, created_at_us) VALUES ('acme', 0) RETURNING id"
            )
        for n in range(3):  # what a core of schema 2 wrote
            async with old.transaction():
                seq = await old.fetchval(
                    "UPDATE event_counter SET last_seq = last_seq + 1 RETURNING last_seq"
                )
                await old.execute(
                    "INSERT INTO events (seq, account_id, message_id, type, timestamp_us, "
                    "received_at_us, key_id, payload, subject) "
                    "VALUES ($1, $2, $3, 'track', 0, 0, 'k', '{}', 'u')",
                    seq,
                    acme,
                    f"old-{n}",
                )
        store = PostgresStore(pg_dsn, PostgresOptions(pool_size=2))
        await store.open()
        try:
            assert await store.latest_sequence() == 3
            cursor = 2  # a client's cursor, from before the migration
            (new,) = await store.write_events([write(acme, track("new"))])
            assert new == 4
            page = await store.list_events(EventQuery(acme, after=cursor))
            assert [r.message_id for r in page] == ["old-2", "new"]
            with pytest.raises(asyncpg.PostgresError) as refused:
                await old.execute("UPDATE event_counter SET last_seq = last_seq + 1")
            assert is_transient(refused.value)
        finally:
            await store.close()
    finally:
        await old.close()


async def _identifies(pg_dsn: str) -> list[str]:
    """The identify events in the table, behind the store's back (its readers leave out
    what is being erased)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT message_id FROM events WHERE type = 'identify'")
    finally:
        await conn.close()
    return sorted(row[0] for row in rows)


async def test_a_late_event_racing_its_users_delete_on_another_core_is_erased(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    """Core two stores a pre-delete event while core one's delete is not committed yet:
    its snapshot cannot see the deletion, so it commits the event. The eraser must wait
    for that transaction (it announced its floor before the deletion committed) and then
    erase what it stored, with the user's other events and profile."""
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    old = identify("old", "2026-01-01T00:00:00Z", "u1", plan="pro")
    await one.write_events([write(acme, at(old, 0))])
    deleting, release_delete = await held_before_commit(
        one, [write(acme, at({"type": "delete", "userId": "u1", "messageId": "del"}, 5))]
    )
    late = identify("late", "2026-01-01T00:00:00Z", "u1", plan="max")
    storing, release_late = await held_before_commit(two, [write(acme, at(late, 1))])
    release_delete.set()
    assert isinstance((await asyncio.wait_for(deleting, LONG))[0], int)
    # The eraser has looked several times since, and waits for core two's transaction.
    checked = one.eraser.checks

    try:
        await eventually(
            lambda: one.eraser.checks >= checked + 3,
            what="the eraser to look at the deletion",
            timeout=LONG,
        )
        assert await _identifies(pg_dsn) == ["old"]  # not erased yet
    finally:
        release_late.set()
    assert isinstance((await asyncio.wait_for(storing, LONG))[0], int)  # missed the record
    await one.wait_erased(LONG)
    assert await _identifies(pg_dsn) == []
    assert await one.get_profile(acme, "u1") is None
    # The deletion is in force: a late event now is suppressed at once.
    again = identify("again", "2026-01-01T00:00:00Z", "u1", plan="x")
    assert await two.write_events([write(acme, at(again, 1))]) == [SUPPRESSED]


async def test_concurrent_groups_on_two_cores_commit_in_seq_order(
    cores: tuple[PostgresStore, PostgresStore],
) -> None:
    """A subscriber polling while both cores write never sees a seq appear below its cursor."""
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    done = asyncio.Event()
    skipped: list[int] = []
    seen: set[int] = set()

    async def subscriber() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            page = await one.list_events(EventQuery(acme, after=cursor, limit=1000))
            seen.update(r.seq for r in page)
            cursor = max([cursor, *(r.seq for r in page)])
            if finished and not page:
                return
            await asyncio.sleep(0)

    async def writer(store: PostgresStore, name: str) -> None:
        for n in range(40):
            await store.write_events([write(acme, track(f"{name}-{n}-{i}")) for i in range(3)])

    reading = asyncio.create_task(subscriber())
    await asyncio.gather(writer(one, "a"), writer(two, "b"), writer(one, "c"), writer(two, "d"))
    done.set()
    await asyncio.wait_for(reading, LONG)
    every = {r.seq for r in await one.list_events(EventQuery(acme, limit=10_000))}
    skipped = sorted(every - seen)
    assert len(every) == 480 and not skipped


async def test_a_commit_on_one_core_wakes_the_streams_of_another(
    cores: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = cores
    await asyncio.wait_for(two.listening.wait(), LONG)
    acme = (await one.ensure_account("acme")).id
    woken = two.commits.current()
    await one.write_events([write(acme, track("cross"))])
    await asyncio.wait_for(woken.wait(), LONG)  # NOTIFY, long before any poll


async def test_the_listener_reconnects_after_the_database_drops_it(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    one, two = cores
    await asyncio.wait_for(two.listening.wait(), LONG)
    connections = two.listens
    admin = await asyncpg.connect(pg_dsn)
    try:
        # What a server restart does to every session: terminate them (all of this
        # database's, the pools' too).
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()

    await eventually(
        lambda: two.listens > connections and two.listening.is_set(),
        what="the listener to reconnect",
        timeout=LONG,
    )
    acme = (await _retry(lambda: one.ensure_account("acme"))).id
    woken = two.commits.current()
    await _retry(lambda: one.write_events([write(acme, track("after-restart"))]))
    await asyncio.wait_for(woken.wait(), LONG)


async def _retry(call: Callable[[], Awaitable[T]]) -> T:
    """The first call after a restart may meet a pooled connection that died: 503 once."""
    from service.errors import StoreUnavailable

    for _ in range(3):
        try:
            return await call()
        except StoreUnavailable:
            continue
    return await call()


async def test_a_groups_rows_are_written_in_key_order_whatever_the_events_order() -> None:
    """Cores upserting the same users' rows lock them in one order, so they wait for each
    other instead of deadlocking (the server would abort one after deadlock_timeout, 1 s:
    503s and second-long stalls with two cores)."""
    from service.projections import project
    from service.store.postgres import Projected

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        async def execute(self, sql: str, *args: Any) -> None:
            self.calls.append(args)

    written: list[list[tuple[Any, ...]]] = []
    for users in (["u2", "u1", "u3"], ["u3", "u1", "u2"]):
        projected = Projected()
        for user in users:
            body = {
                **identify(f"m-{user}", "2026-01-01T00:00:00Z", user, plan="p", email="e"),
                "anonymousId": f"a-{user}",
            }
            projected.add(write(1, body), project(write(1, body).event))
        conn = Recorder()
        await projected.write(conn)  # type: ignore[arg-type]
        written.append(conn.calls)
    assert written[0] == written[1]
    for args in written[0]:
        rows = list(zip(*args, strict=True))
        assert rows == sorted(rows)


@contextlib.asynccontextmanager
async def _plans_database(
    pg_dsn: str,
) -> AsyncIterator[tuple[asyncpg.Connection[asyncpg.Record], int, int]]:
    """The plan tests' database, at the newest schema: a connection to it, an account, and
    a recorded deletion of that account's user `u1`."""
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        account = await conn.fetchval(
            "INSERT INTO accounts (name, created_at_us) VALUES ('plans', 0) RETURNING id"
        )
        deletion = await conn.fetchval(
            "INSERT INTO deletions (account_id, user_id, message_id, requested_at_us, "
            "erased_ids, erased_events, deleted_at_us, seq) "
            "VALUES ($1, 'u1', 'd', 0, 1, 0, 0, 1) RETURNING id",
            account,
        )
        yield conn, int(account), int(deletion)
    finally:
        await conn.close()


@pytest.mark.parametrize("statement", ["erase", "profile counts"])
async def test_erasing_and_counting_a_user_search_by_type(pg_dsn: str, statement: str) -> None:
    """A user deleted N times has N delete events under their id: erasing them again, or
    counting their events, must search by type, not read those (quadratic in the
    deletes of one user). A database with such a user, and statistics."""
    async with _plans_database(pg_dsn) as (conn, account, deletion):
        await conn.execute(
            """
            INSERT INTO events (seq, account_id, message_id, type, user_id, timestamp_us,
                                received_at_us, key_id, payload, subject, event_time_us)
            SELECT nextval('event_seq'), $1, 'm' || n, t, u, 0, 0, 'k', '{}', u, 0
            FROM generate_series(1, 6000) AS n,
                 LATERAL (SELECT CASE WHEN n <= 3000 THEN 'delete' ELSE 'track' END AS t,
                                 CASE WHEN n <= 3000 THEN 'u1' ELSE 'u' || n % 300 END AS u) x
            """,
            account,
        )
        await conn.execute(
            "INSERT INTO deleted_ids (account_id, id, deletion_id, deleted_at_us) "
            "VALUES ($1, 'u1', $2, 0)",
            account,
            deletion,
        )
        await conn.execute("ANALYZE")
        if statement == "erase":
            explained = await conn.fetch("EXPLAIN " + _ERASE_EVENTS, [deletion])
        else:
            explained = await conn.fetch("EXPLAIN " + PROFILE_COUNTS, account, ["u1"])
    plan = "\n".join(row[0] for row in explained)
    assert "events_subject_type" in plan, plan
    conditions = [line for line in plan.splitlines() if "Index Cond" in line and "subject" in line]
    assert conditions and all("type" in line for line in conditions), plan


async def test_the_ingest_statements_search_deleted_ids_and_links_by_key(pg_dsn: str) -> None:
    """Every ingest group reads when its users were last deleted, and every delete walks
    its user's links: each must search the key per id, not hash the whole table, which
    grows with every deletion and every user (a join's plan did: the planner expects
    100 rows from unnest). On a new database, without statistics, as every one starts."""
    async with _plans_database(pg_dsn) as (conn, account, deletion):
        await conn.execute(
            "INSERT INTO deleted_ids (account_id, id, deletion_id, deleted_at_us) "
            "SELECT $1, 'u' || n, $2, 0 FROM generate_series(1, 5000) AS n",
            account,
            deletion,
        )
        await conn.execute(
            "INSERT INTO identity_links (account_id, id, other, kind) "
            "SELECT $1, 'u' || n, 'a' || n, 'device' FROM generate_series(1, 5000) AS n",
            account,
        )
        columns = [[account], ["m1"], ["track"], ["u1"], [None], ["e"], [None], [None]]
        columns += [[0], [0], ["k"], [b"{}"], [None], ["u1"], [0]]
        write_plan = await conn.fetch(
            "EXPLAIN " + _WRITE_EVENTS, *columns, [account, account], ["u1", "u2"]
        )
        walk_plan = await conn.fetch("EXPLAIN " + LINKED_IDS, account, "u1")
        # And the generic plans the ingest transaction uses (plan_cache_mode), made
        # without the values: PREPARE, then EXPLAIN EXECUTE.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        types = "bigint[], " + "text[], " * 7 + "bigint[], bigint[], text[], bytea[], bytea[], "
        await conn.execute(
            f"PREPARE w({types}text[], bigint[], bigint[], text[]) AS {_WRITE_EVENTS}"
        )
        await conn.execute(f"PREPARE k(bigint, text) AS {LINKED_IDS}")
        generic_write = await conn.fetch(f"EXPLAIN EXECUTE w({', '.join(['NULL'] * 17)})")
        generic_walk = await conn.fetch("EXPLAIN EXECUTE k(NULL, NULL)")
    for explained, table in (
        (write_plan, "deleted_ids"),
        (walk_plan, "identity_links"),
        (generic_write, "deleted_ids"),
        (generic_walk, "identity_links"),
    ):
        plan = "\n".join(row[0] for row in explained)
        assert f"Seq Scan on {table}" not in plan, plan
        assert (
            f"Index Scan using {table}_pkey" in plan
            or f"Index Only Scan using {table}_pkey" in plan
        ), plan


async def test_the_eraser_gives_way_to_a_transaction_holding_the_users_rows(
    pg_dsn: str, cores: tuple[PostgresStore, PostgresStore]
) -> None:
    """While another transaction holds a row of the deleted user's profile (an ingest
    transaction of a returning user, say), the eraser gives up after its lock timeout
    and tries again, instead of waiting on it: an ingest transaction that then waited
    on the eraser's rows would deadlock with it, stalling every core's commits until
    the server noticed. Once the row is free, the erasure completes."""
    one, _ = cores
    acme = (await one.ensure_account("acme")).id
    await one.write_events([write(acme, identify("i-1", "2026-01-01T00:00:00Z", "x", plan="pro"))])
    holder = await asyncpg.connect(pg_dsn)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM traits WHERE subject_id = 'x' FOR UPDATE")
        before = one.eraser.gave_way
        delete = write(acme, at({"type": "delete", "userId": "x", "messageId": "del-x"}, 5))
        assert isinstance((await one.write_events([delete]))[0], int)
        await eventually(
            lambda: one.eraser.gave_way >= before + 2, what="the eraser giving way twice"
        )
        await transaction.rollback()
        await one.wait_erased()
    finally:
        await holder.close()
    assert await one.get_profile(acme, "x") is None
    assert await one.get_event_payload(acme, "i-1") is None


async def test_a_session_the_server_ended_mid_transaction_is_a_transient_failure(
    pg_dsn: str,
) -> None:
    """When the server ends a session between two statements (a restart, the idle-in-
    transaction timeout), asyncpg may report a protocol state clash rather than a closed
    connection. That is the database's trouble, 503 and retried, never a 500; nothing of
    the group is stored, and the store goes on with another connection."""
    store = PostgresStore(pg_dsn, PostgresOptions(pool_size=1))
    await store.open()
    try:
        acme = (await store.ensure_account("acme")).id

        async def ended() -> None:
            store.before_commit = None
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )

        store.before_commit = ended
        with pytest.raises(StoreUnavailable):
            await store.write_events([write(acme, track("lost"))])
        assert await store.get_event_payload(acme, "lost") is None
        (stored,) = await store.write_events([write(acme, track("next"))])
        assert isinstance(stored, int)
    finally:
        await store.close()


async def _store_then_delete(store: PostgresStore, account: int, user: str, at_s: int = 5) -> None:
    """An identify of `user` (a profile and an event to erase), then their delete,
    committed (recorded: erased later, by the eraser)."""
    event = identify(f"i-{user}", "2026-01-01T00:00:00Z", user, plan="pro")
    await store.write_events([write(account, event)])
    delete = at({"type": "delete", "userId": user, "messageId": f"del-{user}"}, at_s)
    assert isinstance((await store.write_events([write(account, delete)]))[0], int)


async def test_deletes_committed_close_together_are_erased_in_one_transaction(
    pg_dsn: str,
) -> None:
    """The eraser lets the deletes of a short while (`erase_gather_s`) gather after the
    first one commits and erases them together: a burst of deletes costs one erasure
    transaction, not one each. Meanwhile reads already leave the deleted users out.
    (The pause between the deletes gives an eraser that does not gather time to erase
    each alone; the gather outlasts them by far.)"""
    store = PostgresStore(pg_dsn, PostgresOptions(pool_size=2, erase_gather_s=2.0))
    await store.open()
    try:
        acme = (await store.ensure_account("acme")).id
        users = ["u1", "u2", "u3"]
        for number, user in enumerate(users):
            await _store_then_delete(store, acme, user, 5 + number)
            await asyncio.sleep(0.1)
        assert [await store.get_profile(acme, user) for user in users] == [None] * 3
        await store.wait_erased(LONG)
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        erased = await conn.fetch("SELECT erased_at_us, erased_events FROM deletions")
    finally:
        await conn.close()
    assert [row["erased_events"] for row in erased] == [1, 1, 1]
    assert len({row["erased_at_us"] for row in erased}) == 1  # one transaction's time


async def test_a_delete_still_gathering_at_shutdown_is_erased_before_the_store_closes(
    pg_dsn: str,
) -> None:
    """A core that stops while its deletes wait for the gather to end erases them
    before it closes, instead of leaving the users' data on disk until a core starts."""
    store = PostgresStore(pg_dsn, PostgresOptions(pool_size=2, erase_gather_s=LONG * 6))
    await store.open()
    try:
        acme = (await store.ensure_account("acme")).id
        await _store_then_delete(store, acme, "u1")
    finally:
        await asyncio.wait_for(store.close(), LONG)
    conn = await asyncpg.connect(pg_dsn)
    try:
        erased = await conn.fetch("SELECT erased_at_us, erased_events FROM deletions")
        kept = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'identify'")
    finally:
        await conn.close()
    assert [row["erased_events"] for row in erased] == [1] and erased[0]["erased_at_us"]
    assert kept == 0


async def test_a_deletion_another_core_left_unerased_is_erased_by_the_next_cores_poll(
    pg_dsn: str,
) -> None:
    """A core that recorded a deletion and never erased it (killed during the gather,
    here: a gather far longer than the test) does not leave the user's data for good:
    another core's periodic look (`erase_poll_s`) finds the deletion and erases it,
    once."""
    stalled = PostgresStore(pg_dsn, PostgresOptions(pool_size=2, erase_gather_s=LONG * 6))
    other = PostgresStore(pg_dsn, PostgresOptions(pool_size=2, erase_poll_s=0.2))
    await stalled.open()
    await other.open()
    conn = await asyncpg.connect(pg_dsn)
    try:
        acme = (await stalled.ensure_account("acme")).id
        await _store_then_delete(stalled, acme, "u1")
        await eventually(
            lambda: conn.fetchval("SELECT erased_at_us IS NOT NULL FROM deletions"),
            what="the other core's poll erasing the deletion",
            timeout=LONG,
        )
        assert await conn.fetchval("SELECT erased_events FROM deletions") == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'identify'") == 0
    finally:
        await conn.close()
        await asyncio.wait_for(stalled.close(), LONG)
        await other.close()


async def test_the_erasers_work_is_exported_as_metrics(pg_dsn: str) -> None:
    """A deleted user's data stays in the database until the eraser has run: operators
    see what it erased, what waits, how often it gave way and whether it failed, in the
    core's metrics."""
    registry = CollectorRegistry()
    store = PostgresStore(pg_dsn, PostgresOptions(pool_size=2))
    core = await start_core(CoreConfig(listen="127.0.0.1:0"), store, registry)
    try:
        acme = (await store.ensure_account("acme")).id
        await _store_then_delete(store, acme, "u1")
        await store.wait_erased(LONG)
        await eventually(
            lambda: registry.get_sample_value("inlet_pg_deletions_erased_total") == 1,
            what="the erased deletion counted",
        )
        await eventually(
            lambda: registry.get_sample_value("inlet_pg_deletions_waiting") == 0,
            what="no deletion left waiting at the eraser's latest look",
        )
        assert registry.get_sample_value("inlet_pg_erasure_failures_total") == 0
        assert registry.get_sample_value("inlet_pg_erasures_given_way_total") == 0
    finally:
        await core.stop(grace=0)
