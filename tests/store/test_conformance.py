"""The Store contract, checked the same way on SQLite and PostgreSQL (conftest.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg
import orjson
import pytest

from service import keys
from service.errors import StoreUnavailable
from service.store import Store, StoreError
from service.store.base import SUPPRESSED, EventQuery, EventWrite
from service.store.postgres import schema as pg_schema
from service.store.sqlite import schema as sqlite_schema
from service.timestamps import format_micros
from service.validation import canonicalise
from tests.exact_values import EXACT_TRAITS, group_json, identify_json
from tests.store.conftest import Backend

NOW_US = 1_780_000_000_000_000


def write(account: int, body: dict[str, Any], key_id: str = "k1") -> EventWrite:
    event = canonicalise(orjson.dumps(body), received_at_us=NOW_US)
    return EventWrite(account, key_id, event)


def track(message_id: str, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": user, "event": "Clicked", **extra}


def identify(message_id: str, timestamp: str, user: str, **traits: Any) -> dict[str, Any]:
    body = {"type": "identify", "messageId": message_id, "userId": user, "traits": traits}
    return {**body, "timestamp": timestamp}


async def account(store: Store, name: str = "acme") -> int:
    return (await store.ensure_account(name)).id


async def test_a_redelivery_is_stored_once(store: Store) -> None:
    acme = await account(store)
    first = await store.write_events([write(acme, track("m-1"))])
    assert first[0] is not None
    assert await store.write_events([write(acme, track("m-1"))]) == [None]
    # Twice in one group: the first is stored, the second is the duplicate.
    both = await store.write_events([write(acme, track("m-2")), write(acme, track("m-2"))])
    assert both[0] is not None and both[1] is None
    # The same messageId in another account is another event.
    other = await account(store, "globex")
    assert (await store.write_events([write(other, track("m-1"))]))[0] is not None
    assert await store.count_events(acme) == 2


async def test_concurrent_duplicates_on_two_stores_are_stored_once_and_both_succeed(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()  # a second core on the same database
    acme = await account(store)
    ids = [f"dup-{n}" for n in range(30)]
    results = await asyncio.gather(
        *(s.write_events([write(acme, track(m))]) for m in ids for s in (store, other))
    )
    for n in range(len(ids)):
        mine, theirs = results[2 * n][0], results[2 * n + 1][0]
        assert (mine is None) != (theirs is None), (mine, theirs)  # one stored, one duplicate
    assert await store.count_events(acme) == len(ids)
    stored = await store.list_events(EventQuery(acme, limit=100))
    assert sorted(r.message_id for r in stored) == sorted(ids)


async def test_sequences_follow_the_commit_order_and_latest_sequence(store: Store) -> None:
    acme = await account(store)
    assert await store.latest_sequence() == 0
    seqs: list[int] = []
    for n in range(5):
        (seq,) = await store.write_events([write(acme, track(f"s-{n}"))])
        assert isinstance(seq, int)  # stored (not None: a duplicate)
        seqs.append(seq)
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert await store.latest_sequence() >= max(s for s in seqs if s is not None)
    after = await store.list_events(EventQuery(acme, after=seqs[1], limit=10))
    assert [r.seq for r in after] == seqs[2:]


async def test_out_of_order_identifies_keep_the_newest_trait(store: Store) -> None:
    acme = await account(store)
    await store.write_events(
        [write(acme, identify("i-3", "2026-03-03T00:00:00Z", "u1", plan="pro"))]
    )
    await store.write_events(
        [
            write(acme, identify("i-2", "2026-02-02T00:00:00Z", "u1", email="b@x", First_Name="A")),
            write(acme, identify("i-1", "2026-01-01T00:00:00Z", "u1", email="a@x", plan="free")),
        ]
    )
    profile = await store.get_profile(acme, "u1")
    assert profile is not None
    values = {k: orjson.loads(t.value) for k, t in profile.traits.items()}
    assert values == {"plan": "pro", "email": "b@x", "firstName": "A"}
    assert profile.traits["plan"].message_id == "i-3"
    assert profile.event_counts == {"identify": 3}


async def test_one_group_merges_its_own_traits_as_one_by_one_would(store: Store) -> None:
    """A group carrying several identifies of one user (PostgreSQL writes a group's
    traits in one statement): newest timestamp wins, a tie goes to the later event."""
    acme = await account(store)
    results = await store.write_events(
        [
            write(acme, identify("g-1", "2026-02-02T00:00:00Z", "u1", plan="pro", email="1@x")),
            write(acme, identify("g-2", "2026-01-01T00:00:00Z", "u1", plan="free", name="Old")),
            write(acme, identify("g-3", "2026-02-02T00:00:00Z", "u1", email="3@x")),
            write(acme, identify("g-1", "2026-09-09T00:00:00Z", "u1", plan="dup")),  # duplicate
            write(acme, {"type": "alias", "messageId": "g-4", "userId": "u1", "previousId": "a"}),
            write(acme, {"type": "alias", "messageId": "g-5", "userId": "u1", "previousId": "a"}),
        ]
    )
    assert [seq is not None for seq in results] == [True, True, True, False, True, True]
    profile = await store.get_profile(acme, "a")  # found through the alias, made once
    assert profile is not None
    values = {k: orjson.loads(t.value) for k, t in profile.traits.items()}
    assert values == {"plan": "pro", "email": "3@x", "name": "Old"}
    assert profile.traits["email"].message_id == "g-3"


async def test_links_groups_and_lookup_by_any_linked_id(store: Store) -> None:
    acme = await account(store)
    await store.write_events(
        [
            write(acme, {"type": "track", "anonymousId": "anon-1", "event": "V", "messageId": "a"}),
            write(
                acme, {"type": "alias", "previousId": "anon-1", "userId": "u1", "messageId": "b"}
            ),
            write(
                acme,
                {
                    "type": "identify",
                    "userId": "u1",
                    "anonymousId": "anon-2",
                    "messageId": "c",
                    "traits": {"email": "u@x"},
                },
            ),
            write(
                acme,
                {
                    "type": "group",
                    "userId": "u1",
                    "groupId": "g1",
                    "messageId": "d",
                    "traits": {"name": "Initech"},
                },
            ),
        ]
    )
    for id in ("u1", "anon-1", "anon-2"):
        assert await store.linked_ids(acme, id) == ("anon-1", "anon-2", "u1")
        profile = await store.get_profile(acme, id)
        assert profile is not None
        assert profile.linked_ids == ("anon-1", "anon-2", "u1")
        assert profile.event_counts == {"track": 1, "alias": 1, "identify": 1, "group": 1}
        assert [g.group_id for g in profile.groups] == ["g1"]
        assert orjson.loads(profile.groups[0].traits["name"].value) == "Initech"
    assert await store.get_profile(acme, "nobody") is None
    history = await store.list_events(EventQuery(acme, ids=("anon-1", "anon-2", "u1")))
    assert [r.message_id for r in history] == ["a", "b", "c", "d"]


async def test_trait_values_are_stored_as_sent(store: Store) -> None:
    """Numbers keep their JSON text: `5` stays `5`, a 19-digit id keeps its digits, an
    integer beyond 64 bits or a long decimal is not rounded through a double."""
    acme = await account(store)
    raw = [identify_json("x-1", "u1"), group_json("x-2", "u1", "g1")]
    events = [canonicalise(r, received_at_us=NOW_US) for r in raw]
    await store.write_events([EventWrite(acme, "k1", e) for e in events])
    profile = await store.get_profile(acme, "u1")
    assert profile is not None
    expected = {key: text.encode() for key, text in EXACT_TRAITS.items()}
    assert {key: t.value for key, t in profile.traits.items()} == expected
    assert {key: t.value for key, t in profile.groups[0].traits.items()} == expected


async def test_delete_erases_the_user_and_keeps_an_audit_record(
    backend: Backend, store: Store
) -> None:
    acme = await account(store)
    await store.write_events(
        [
            write(
                acme,
                {
                    "type": "identify",
                    "userId": "gone",
                    "anonymousId": "anon-g",
                    "messageId": "d-1",
                    "traits": {"email": "g@x"},
                },
            ),
            write(acme, {"type": "group", "userId": "gone", "groupId": "g9", "messageId": "d-2"}),
            write(acme, track("d-keep", "someone-else")),
        ]
    )
    # The delete, then in the same group the user again: erased is only what came before.
    await store.write_events(
        [
            write(acme, {"type": "delete", "userId": "gone", "messageId": "del-1"}),
            write(acme, track("d-after", "gone")),
        ]
    )
    await erased(store)
    for message_id in ("d-1", "d-2"):
        assert await store.get_event_payload(acme, message_id) is None
    assert await store.get_event_payload(acme, "d-keep") is not None
    profile = await store.get_profile(acme, "gone")
    assert profile is not None and profile.event_counts == {"track": 1} and not profile.traits
    assert await store.get_profile(acme, "anon-g") is None  # the link went with the user
    deletes = await store.list_events(EventQuery(acme, types=("delete",)))
    assert [(r.user_id, r.message_id) for r in deletes] == [("gone", "del-1")]
    audit = await backend.rows(
        "SELECT user_id, message_id, erased_ids, erased_events FROM deletions"
    )
    assert audit == [("gone", "del-1", 2, 2)]


MINUTE = 60_000_000


async def erased(store: Store) -> None:
    """Until the deletions recorded are erased: at once on SQLite, in the background on
    PostgreSQL (whose readers leave out what is being erased meanwhile)."""
    wait = getattr(store, "wait_erased", None)
    if wait is not None:
        await wait()


def at(body: dict[str, Any], minute: int) -> dict[str, Any]:
    """`body` as Segment delivers it, received `minute` minutes after NOW_US."""
    return {**body, "receivedAt": format_micros(NOW_US + minute * MINUTE)}


async def test_events_a_deletion_covered_are_suppressed_later_ones_stored(
    backend: Backend, store: Store
) -> None:
    acme = await account(store)
    before = [
        at(
            {
                "type": "identify",
                "userId": "gone",
                "anonymousId": "dev-1",
                "messageId": "e-1",
                "traits": {"email": "g@x", "plan": "pro"},
            },
            0,
        ),
        at({"type": "alias", "previousId": "old-id", "userId": "gone", "messageId": "e-2"}, 0),
        at({"type": "page", "anonymousId": "dev-1", "name": "Home", "messageId": "e-3"}, 0),
    ]
    await store.write_events([write(acme, b) for b in before])
    delete = at({"type": "delete", "userId": "gone", "messageId": "del-1"}, 5)
    assert isinstance((await store.write_events([write(acme, delete)]))[0], int)
    # Segment redelivers what it received before the delete, and the linked ids' events:
    # none is stored again (and a retry of them gets the same answer).
    late = [
        *before,
        at(track("e-4", "old-id"), 4),
        at(
            {"type": "alias", "previousId": "dev-1", "userId": "someone-new", "messageId": "e-5"}, 1
        ),
    ]
    for _ in range(2):
        assert await store.write_events([write(acme, b) for b in late]) == [SUPPRESSED] * 5
    assert await store.get_profile(acme, "gone") is None
    assert await store.get_profile(acme, "dev-1") is None
    assert await store.get_profile(acme, "someone-new") is None
    for message_id in ("e-1", "e-2", "e-3", "e-4", "e-5"):
        assert await store.get_event_payload(acme, message_id) is None
    # Received after the delete: a returning user, stored; so is another user of the
    # deleted user's device (an anonymousId beside a userId is not the subject).
    after = [
        at(
            {"type": "identify", "userId": "gone", "messageId": "n-1", "traits": {"plan": "free"}},
            6,
        ),
        at(
            {
                "type": "track",
                "userId": "other",
                "anonymousId": "dev-1",
                "event": "E",
                "messageId": "n-2",
            },
            1,
        ),
        at(track("n-3", "stranger"), 1),
    ]
    assert all(
        isinstance(r, int) for r in await store.write_events([write(acme, b) for b in after])
    )
    await erased(store)  # until then a deleted id has no profile (PostgreSQL)
    found = await store.get_profile(acme, "gone")
    assert found is not None and list(found.traits) == ["plan"]
    assert found.event_counts == {"identify": 1}  # the delete event is no profile's
    # The record: each id linked at the time, with the delete's receivedAt.
    deleted_at = NOW_US + 5 * MINUTE
    assert sorted(await backend.rows("SELECT id, deleted_at_us FROM deleted_ids")) == [
        ("dev-1", deleted_at),
        ("gone", deleted_at),
        ("old-id", deleted_at),
    ]
    assert await backend.rows("SELECT user_id, deleted_at_us FROM deletions") == [
        ("gone", deleted_at)
    ]
    # Another account's ids of the same name are not deleted.
    globex = await account(store, "globex")
    assert isinstance((await store.write_events([write(globex, before[0])]))[0], int)


async def test_a_delete_and_its_users_late_events_in_one_group(store: Store) -> None:
    acme = await account(store)
    old = at(
        {
            "type": "identify",
            "userId": "u9",
            "anonymousId": "d9",
            "messageId": "o-1",
            "traits": {"plan": "pro"},
        },
        0,
    )
    results = await store.write_events(
        [
            write(acme, old),
            write(acme, at({"type": "delete", "userId": "u9", "messageId": "del-9"}, 5)),
            write(acme, at(track("o-2", "d9"), 1)),  # a late one, after it in the group
            write(acme, at(track("o-3", "u9"), 6)),  # the user coming back
        ]
    )
    assert isinstance(results[0], int) and isinstance(results[1], int)
    assert results[2:] == [SUPPRESSED, results[3]] and isinstance(results[3], int)
    await erased(store)
    found = await store.get_profile(acme, "u9")
    assert found is not None and found.event_counts == {"track": 1} and not found.traits
    assert await store.get_event_payload(acme, "o-1") is None


@pytest.mark.parametrize("one_group", [False, True], ids=["groups", "one group"])
async def test_a_returning_users_links_are_stored_again(
    backend: Backend, store: Store, one_group: bool
) -> None:
    """A deletion erases its ids' links; when the user comes back with the same device,
    the link is made again, so the next deletion covers the device too. Another user's
    links outlive the deletion."""
    acme = await account(store)

    def seen(message_id: str, user: str, device: str, minute: int) -> dict[str, Any]:
        return at(track(message_id, user, anonymousId=device), minute)

    stages = [
        [seen("t-1", "u1", "a1", 0), seen("t-2", "u2", "a2", 0)],
        [at({"type": "delete", "userId": "u1", "messageId": "del-1"}, 5)],
        [seen("t-3", "u1", "a1", 6), seen("t-4", "u2", "a2", 6)],
    ]
    groups = [[b for stage in stages for b in stage]] if one_group else stages
    for group in groups:
        results = await store.write_events([write(acme, b) for b in group])
        assert all(isinstance(r, int) for r in results)
    await erased(store)
    await store.write_events(
        [write(acme, at({"type": "delete", "userId": "u1", "messageId": "del-2"}, 7))]
    )
    await erased(store)
    second = await backend.rows(
        "SELECT id FROM deleted_ids WHERE deletion_id = (SELECT max(id) FROM deletions)"
    )
    assert sorted(second) == [("a1",), ("u1",)]
    found = await store.get_profile(acme, "a2")
    assert found is not None and sorted(found.linked_ids) == ["a2", "u2"]


async def test_an_account_may_suppress_every_later_event_of_a_deleted_user(
    store: Store,
) -> None:
    acme = await account(store)
    assert not (await store.get_account("acme")).suppress_deleted_users  # type: ignore[union-attr]
    await store.write_events([write(acme, at(track("s-1", "u3"), 0))])
    await store.write_events(
        [write(acme, at({"type": "delete", "userId": "u3", "messageId": "del-3"}, 5))]
    )
    later = write(acme, at(track("s-2", "u3"), 6))
    assert await store.write_events([later._replace(suppress_deleted_users=True)]) == [SUPPRESSED]
    assert isinstance((await store.write_events([later]))[0], int)  # off: a returning user
    # Once stored, a redelivery is a duplicate, whatever the setting says now.
    assert await store.write_events([later._replace(suppress_deleted_users=True)]) == [None]
    # The setting itself, kept with the account and read with its keys.
    changed = await store.set_account_suppress_deleted_users("acme", True)
    assert changed.suppress_deleted_users and (await store.get_account("acme")) == changed
    new = keys.generate_key()
    await store.create_key(acme, new.key_id, new.secret_hash, ("ingest",))
    assert (await store.get_key(new.key_id)).account_suppresses_deleted_users  # type: ignore[union-attr]
    assert (await store.create_account("strict", True)).suppress_deleted_users  # type: ignore[union-attr]
    assert [a.suppress_deleted_users for a in await store.list_accounts()] == [True, True]
    with pytest.raises(StoreError):
        await store.set_account_suppress_deleted_users("nope", True)


async def test_a_user_filter_finds_the_users_delete_events(store: Store) -> None:
    acme = await account(store)
    await store.write_events([write(acme, at(track("f-1", "u4"), 0))])
    for n in (1, 2):  # deleted twice: both records stay
        await store.write_events(
            [write(acme, at({"type": "delete", "userId": "u4", "messageId": f"del-{n}"}, n))]
        )
    mine = await store.list_events(EventQuery(acme, ids=("u4",)))
    assert [(r.type, r.message_id) for r in mine] == [("delete", "del-1"), ("delete", "del-2")]
    only = await store.list_events(EventQuery(acme, ids=("u4",), types=("delete",)))
    assert [r.message_id for r in only] == ["del-1", "del-2"]
    assert await store.get_profile(acme, "u4") is None


async def test_deletions_stored_before_the_upgrade_keep_their_user_out(backend: Backend) -> None:
    """A database from before deleted_ids: each deletion's user is recorded on upgrade,
    with the time Inlet stored it (its linked ids were erased with their links)."""
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.url, isolation_level=None) as db:
            sqlite_schema.migrate(db, sqlite_schema.MIGRATIONS[:2])
        payload, counter = "CAST('{}' AS BLOB)", "SELECT 1"
    else:
        conn = await asyncpg.connect(backend.url)
        try:
            await pg_schema.migrate(conn, pg_schema.MIGRATIONS[:1])
        finally:
            await conn.close()
        payload = "convert_to('{}', 'UTF8')"
        counter = "UPDATE event_counter SET last_seq = 1"
    stored_at = NOW_US + 5 * MINUTE
    for sql in (
        "INSERT INTO accounts (name, created_at_us) VALUES ('acme', 0)",
        (
            "INSERT INTO events (seq, account_id, message_id, type, user_id, timestamp_us, "
            f"received_at_us, key_id, payload) VALUES (1, 1, 'del-1', 'delete', 'u1', "
            f"{stored_at}, {stored_at}, 'k1', {payload})"
        ),
        counter,
        (
            "INSERT INTO deletions (account_id, user_id, message_id, requested_at_us, "
            f"erased_ids, erased_events) VALUES (1, 'u1', 'del-1', {stored_at}, 2, 3)"
        ),
    ):
        await backend.rows(sql)
    store = await backend.open()  # migrates
    assert await backend.rows("SELECT id, deleted_at_us FROM deleted_ids") == [("u1", stored_at)]
    assert not (await store.get_account("acme")).suppress_deleted_users  # type: ignore[union-attr]
    mine = await store.list_events(EventQuery(1, ids=("u1",)))
    assert [r.message_id for r in mine] == ["del-1"]
    late, back = at(track("t-1", "u1"), 4), at(track("t-2", "u1"), 6)
    results = await store.write_events([write(1, late), write(1, back)])
    assert results[0] is SUPPRESSED and isinstance(results[1], int)


async def test_list_events_filters_and_pages(store: Store) -> None:
    acme = await account(store)
    bodies = [
        track(f"p-{n}", "u1" if n % 2 else "u2", timestamp=f"2026-01-{n + 1:02d}T00:00:00Z")
        for n in range(25)
    ]
    bodies[3] = {**bodies[3], "event": "Bought"}
    await store.write_events([write(acme, b) for b in bodies])
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_events(EventQuery(acme, after=after, limit=10))
        seen += [r.message_id for r in page]
        if len(page) < 10:
            break
        after = page[-1].seq
        # Events arriving while paging come after the cursor, never shifting pages.
        await store.write_events([write(acme, track(f"late-{after}"))])
    assert seen[:25] == [f"p-{n}" for n in range(25)] and len(seen) == 27
    newest = await store.list_events(EventQuery(acme, newest_first=True, limit=3))
    older = await store.list_events(
        EventQuery(acme, newest_first=True, after=newest[-1].seq, limit=3)
    )
    assert [r.seq for r in newest + older] == sorted((r.seq for r in newest + older), reverse=True)
    assert [r.message_id for r in await store.list_events(EventQuery(acme, name="Bought"))] == [
        "p-3"
    ]
    since, until = (
        1_767_225_600_000_000 + 86_400_000_000 * 5,
        1_767_225_600_000_000 + 86_400_000_000 * 8,
    )
    window = await store.list_events(EventQuery(acme, since_us=since, until_us=until))
    assert [r.message_id for r in window] == ["p-5", "p-6", "p-7"]
    mine = await store.list_events(EventQuery(acme, ids=("u2",), types=("track",), limit=100))
    assert len(mine) == 13 and {r.user_id for r in mine} == {"u2"}
    assert await store.list_events(EventQuery(acme, types=("identify",))) == []


async def test_ids_with_nul_characters_are_stored_and_found(backend: Backend, store: Store) -> None:
    acme = await account(store)
    body = identify("n\x00ul", "2026-01-01T00:00:00Z", "u\x00ser", email="n@x")
    assert (await store.write_events([write(acme, body)]))[0] is not None
    assert await store.write_events([write(acme, body)]) == [None]
    if backend.kind == "postgres":
        # (SQLite's json_each lookups stop at the NUL: a known gap of the SQLite store.)
        assert await store.get_profile(acme, "u\x00ser") is not None
    assert await store.get_event_payload(acme, "n\x00ul") == orjson.dumps(body)


async def test_switches(store: Store) -> None:
    assert await store.get_switch("maintenance") is None
    changed = await store.set_switch("maintenance", '{"on": true}')
    assert await store.get_switch("maintenance") == ('{"on": true}', changed)
    later = await store.set_switch("maintenance", '{"on": false}')
    assert later >= changed and (await store.get_switch("maintenance"))[0] == '{"on": false}'  # type: ignore[index]


async def test_accounts(store: Store) -> None:
    b = await store.ensure_account("beta")
    a = await store.ensure_account("Alpha")
    assert (await store.ensure_account("beta")).id == b.id
    assert [x.name for x in await store.list_accounts()] == ["Alpha", "beta"]  # byte order
    assert (await store.set_account_suspended("beta", True)).suspended
    assert (await store.get_account("beta")).suspended  # type: ignore[union-attr]
    assert await store.get_account("nope") is None
    with pytest.raises(StoreError):
        await store.set_account_suspended("nope", True)
    assert a.id != b.id


async def test_creating_an_account_twice_at_once_creates_it_once(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()  # another core on the same database
    created = await asyncio.gather(
        *(s.create_account(f"new-{n}") for n in range(10) for s in (store, other))
    )
    for n in range(10):
        mine, theirs = created[2 * n], created[2 * n + 1]
        assert (mine is None) != (theirs is None), (mine, theirs)
    assert await store.create_account("new-0") is None


async def test_keys_create_list_revoke_rotate(store: Store) -> None:
    acme, globex = await account(store), await account(store, "globex")
    new = keys.generate_key()
    record = await store.create_key(acme, new.key_id, new.secret_hash, ("ingest", "read"), "ci")
    assert record.scopes == ("ingest", "read") and record.account_name == "acme"
    assert await store.get_key(new.key_id) == record
    assert await store.get_key("0" * 16) is None
    other = keys.generate_key()
    await store.create_key(globex, other.key_id, other.secret_hash, ("ingest",))
    assert [k.key_id for k in await store.list_keys()] == [new.key_id, other.key_id]
    assert [k.key_id for k in await store.list_keys(globex)] == [other.key_id]

    rotated = keys.generate_key()
    until = NOW_US + 3_600_000_000
    assert await store.rotate_key(new.key_id, globex, rotated.key_id, b"x", until) is None
    fresh = await store.rotate_key(new.key_id, acme, rotated.key_id, rotated.secret_hash, until)
    assert fresh is not None and fresh.scopes == ("ingest", "read") and fresh.label == "ci"
    assert (await store.get_key(new.key_id)).expires_at_us == until  # type: ignore[union-attr]

    assert await store.revoke_key(other.key_id, account_id=acme) is None  # not acme's
    revoked = await store.revoke_key(other.key_id)
    assert revoked is not None and revoked.revoked_at_us is not None
    assert other.key_id not in [k.key_id for k in await store.list_keys()]
    assert other.key_id in [k.key_id for k in await store.list_keys(include_revoked=True)]
    assert await store.rotate_key(other.key_id, globex, "1" * 16, b"x", until) is None


async def test_migrations_are_versioned_and_idempotent(backend: Backend) -> None:
    # Several cores starting at once on a new database: each applies or finds the schema.
    stores = await asyncio.gather(*(backend.open() for _ in range(3)))
    for store in stores:
        before, after = await store.migrate()
        assert before == after > 0
    await account(stores[0])


async def test_store_down_is_store_unavailable_and_it_recovers(backend: Backend) -> None:
    from tests.pg import Proxy

    if backend.kind == "sqlite":
        store = await backend.open()
        acme = await account(store)
        blocker = await asyncio.to_thread(_lock_sqlite, backend.url)
        try:
            with pytest.raises(StoreUnavailable):
                await store.write_events([write(acme, track("down-1"))])
        finally:
            blocker.close()
        assert (await store.write_events([write(acme, track("down-1"))]))[0] is not None
        assert await store.count_events(acme) == 1
    else:
        proxy = Proxy.for_dsn(backend.url)
        await proxy.start()
        store = await backend.open(proxy.dsn(backend.url))
        try:
            acme = await account(store)
            await proxy.stop()
            for call in (
                store.write_events([write(acme, track("down-1"))]),
                store.get_key("0" * 16),
                store.list_events(EventQuery(acme)),
            ):
                with pytest.raises(StoreUnavailable):
                    await call
            await proxy.start()  # the server is back: no restart of the store needed
            assert (await store.write_events([write(acme, track("down-1"))]))[0] is not None
            assert await store.count_events(acme) == 1
        finally:
            await store.close()  # then the fixture's close does nothing
            await proxy.stop()  # its listening socket and relays too


def _lock_sqlite(path: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


async def test_pruning_deletes_the_oldest_events_received_before_the_cutoff(
    store: Store,
) -> None:
    acme = await account(store)
    day = 86_400_000_000

    def received(message_id: str, days_ago: int, body: dict[str, Any] | None = None) -> EventWrite:
        raw = orjson.dumps(body or track(message_id))
        return EventWrite(acme, "k1", canonicalise(raw, received_at_us=NOW_US - days_ago * day))

    old = [received(f"old-{n}", 40 - n) for n in range(3)]
    profile = received("id-1", 39, identify("id-1", "2026-01-01T00:00:00Z", "u1", plan="pro"))
    new = [received(f"new-{n}", 2) for n in range(2)]
    for w in (*old, profile, *new):  # one group each: stored in this order
        await store.write_events([w])
    latest = await store.latest_sequence()
    cutoff = NOW_US - 30 * day

    # Among the 2 oldest, both are old; then old-2 and id-1 (old); then new-0 stops it.
    assert await store.prune_events(cutoff, 2) == 2
    assert await store.prune_events(cutoff, 2) == 2
    assert await store.prune_events(cutoff, 2) == 0
    stored = await store.list_events(EventQuery(acme, limit=10))
    assert [r.message_id for r in stored] == ["new-0", "new-1"]
    assert await store.latest_sequence() == latest  # "now" does not move back
    # The profile is state, not history: its traits stay.
    found = await store.get_profile(acme, "u1")
    assert found is not None and orjson.loads(found.traits["plan"].value) == "pro"
    # Documented: a redelivery of a pruned event is a new event (hence retention >= 1 day).
    assert (await store.write_events([received("old-0", 40)]))[0] is not None


async def test_pruning_everything_keeps_the_sequence_going(store: Store) -> None:
    acme = await account(store)
    seqs = await store.write_events([write(acme, track(f"p-{n}")) for n in range(3)])
    assert await store.prune_events(NOW_US + 1, 10) == 3
    assert await store.count_events(acme) == 0
    assert await store.latest_sequence() == seqs[-1]
    (after,) = await store.write_events([write(acme, track("p-next"))])
    assert isinstance(after, int) and isinstance(seqs[-1], int) and after > seqs[-1]
