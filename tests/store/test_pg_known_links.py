"""PostgreSQL's known links (service/store/postgres/known_links.py): a core leaves out the
upsert of links it knows are stored, and never one a deletion may have erased."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.store.postgres import PostgresStore
from service.store.postgres.known_links import KnownLinks
from service.store.postgres.projected import Projected
from tests.store.test_conformance import at, track, write
from tests.store.test_postgres import LONG, held_before_commit


@pytest.fixture
def links_sent(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, str, str]]]:
    """The links each ingest or rebuild statement sends, in order."""
    sent: list[list[tuple[int, str, str]]] = []
    write_links = Projected.write_links

    async def recording(self: Projected, conn: Any) -> None:
        if self.links:
            sent.append(sorted(self.links))
        await write_links(self, conn)

    monkeypatch.setattr(Projected, "write_links", recording)
    return sent


def seen(message_id: str, minute: int, user: str = "u1", device: str = "a1") -> dict[str, Any]:
    return at(track(message_id, user, anonymousId=device), minute)


async def linked(store: PostgresStore, account: int, id: str) -> list[str]:
    return sorted(await store.linked_ids(account, id))


async def test_a_known_users_links_are_not_written_again(
    cores: tuple[PostgresStore, PostgresStore], links_sent: list[list[tuple[int, str, str]]]
) -> None:
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    await one.write_events([write(acme, seen("t-1", 0))])
    assert links_sent == [[(acme, "a1", "u1"), (acme, "u1", "a1")]]
    await one.write_events([write(acme, seen("t-2", 1)), write(acme, seen("t-3", 1))])
    assert len(links_sent) == 1  # known to this core: no statement
    # A new link in the group is written, alone.
    await one.write_events([write(acme, seen("t-4", 2)), write(acme, seen("t-5", 2, "u2"))])
    assert links_sent[1:] == [[(acme, "a1", "u2"), (acme, "u2", "a1")]]
    # Another core does not know them: it writes them once (a no-op on the server).
    await two.write_events([write(acme, seen("t-6", 3))])
    await two.write_events([write(acme, seen("t-7", 3))])
    assert links_sent[2:] == [[(acme, "a1", "u1"), (acme, "u1", "a1")]]
    assert await linked(one, acme, "a1") == ["a1", "u1", "u2"]


async def test_a_returning_users_links_are_written_after_their_deletion_was_erased(
    cores: tuple[PostgresStore, PostgresStore], links_sent: list[list[tuple[int, str, str]]]
) -> None:
    """The eraser removed the links this core knew; the user's next events make them
    again, so that the next deletion covers the device too."""
    one, _ = cores
    acme = (await one.ensure_account("acme")).id
    await one.write_events([write(acme, seen("t-1", 0))])
    await one.write_events(
        [write(acme, at({"type": "delete", "userId": "u1", "messageId": "d"}, 5))]
    )
    await one.wait_erased(LONG)
    assert await linked(one, acme, "u1") == ["u1"]
    sent = len(links_sent)
    for n in range(2):  # every time: a deleted id's links are never skipped
        await one.write_events([write(acme, seen(f"back-{n}", 6 + n))])
        assert links_sent[sent + n] == [(acme, "a1", "u1"), (acme, "u1", "a1")]
    assert await linked(one, acme, "u1") == ["a1", "u1"]


async def test_a_device_shared_with_a_deleted_user_is_linked_again_to_the_other(
    cores: tuple[PostgresStore, PostgresStore], links_sent: list[list[tuple[int, str, str]]]
) -> None:
    """Deleting u1 deletes the device a1 it used, and a1's links, u2's included; u2 is not
    deleted, so its next event on a1 must look up a1's deletion too, and link a1 again."""
    one, _ = cores
    acme = (await one.ensure_account("acme")).id
    await one.write_events([write(acme, seen("t-1", 0, "u2")), write(acme, seen("t-2", 0))])
    await one.write_events(
        [write(acme, at({"type": "delete", "userId": "u1", "messageId": "d"}, 5))]
    )
    await one.wait_erased(LONG)
    assert await linked(one, acme, "a1") == ["a1"]
    assert await linked(one, acme, "u2") == ["a1", "u2"]
    await one.write_events([write(acme, seen("t-3", 6, "u2"))])
    assert links_sent[-1] == [(acme, "a1", "u2"), (acme, "u2", "a1")]
    assert await linked(one, acme, "a1") == ["a1", "u2"]


async def test_a_known_link_racing_a_delete_on_another_core_is_rebuilt(
    cores: tuple[PostgresStore, PostgresStore], links_sent: list[list[tuple[int, str, str]]]
) -> None:
    """Core one skips a known link in a transaction whose snapshot missed core two's
    deletion: the eraser waits for it, then rebuilds the links from the events that stay,
    that transaction's included."""
    one, two = cores
    acme = (await one.ensure_account("acme")).id
    await one.write_events([write(acme, seen("t-1", 0))])
    # The delete draws its number first and commits after core one's statement ran.
    deleting, release_delete = await held_before_commit(
        two, [write(acme, at({"type": "delete", "userId": "u1", "messageId": "d"}, 5))]
    )
    sent = len(links_sent)
    storing, release_late = await held_before_commit(one, [write(acme, seen("back", 6))])
    assert len(links_sent) == sent  # skipped: no deletion in its snapshot
    release_delete.set()
    assert isinstance((await asyncio.wait_for(deleting, LONG))[0], int)
    release_late.set()
    assert isinstance((await asyncio.wait_for(storing, LONG))[0], int)
    await two.wait_erased(LONG)
    await one.wait_erased(LONG)
    assert await linked(one, acme, "u1") == ["a1", "u1"]  # rebuilt from "back"
    assert await linked(one, acme, "a1") == ["a1", "u1"]


def test_known_links_forget_the_least_recently_used_and_the_deleted() -> None:
    known = KnownLinks(limit=2)
    a, b, c = (1, "u1", "a1"), (1, "u2", "a2"), (1, "u3", "a3")
    known.remember([a, b], {})
    assert known.skippable(a, {})  # a is now the most recently used
    known.remember([c], {})
    assert (a in known, b in known, c in known) == (True, False, True)
    # Either id deleted: written, and forgotten.
    assert not known.skippable(a, {"a1": 5})
    assert a not in known
    # A committed link with an id deleted in its own transaction is not remembered.
    known.remember([a, (2, "u1", "a1")], {1: {"u1": 5}})
    assert a not in known and (2, "u1", "a1") in known
