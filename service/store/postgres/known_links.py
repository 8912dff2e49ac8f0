"""The identity links one core knows to be stored, so that an ingest transaction whose
links are all known skips their upsert (a round trip, and an index search per link on
the server): most events of a known user carry the same two ids again.

Skipping a known link is safe only while it is still stored. Links are removed by the
eraser alone, and only the links of a deleted id (eraser.py's `_UNLINK`). So a link is
skipped only when neither of its ids has a deletion the ingest transaction can see:
the transaction asks when its links' ids were last deleted in the statement that
inserts its events (events.py), as it asks for the ids a deletion covers.

* A deletion committed before that statement is seen: the link is written.
* One committed later was missed by the transaction's snapshot, so the eraser waits
  for the transaction to end (its fence, eraser.py) before it unlinks anything. It
  then rebuilds the links from the events that stay, this transaction's included:
  as if the upsert had run, and found the row there.

A link is remembered only once its transaction has committed, and never while one of
its ids has a deletion (deleted ids are never removed: those links are written every
time, as without the cache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final

#: (account, id, other): identity_links' key, the ids as stored (pg_text).
LinkKey = tuple[int, str, str]

#: Most links remembered (least recently used forgotten first): ~300 bytes each with
#: their ids, so ~30 MB at most.
MAX_KNOWN_LINKS: Final = 100_000


class KnownLinks:
    """A bounded set of links known to be stored, least recently used forgotten first."""

    def __init__(self, limit: int = MAX_KNOWN_LINKS) -> None:
        self._limit = limit
        self._links: OrderedDict[LinkKey, None] = OrderedDict()

    def __contains__(self, key: LinkKey) -> bool:
        return key in self._links

    def skippable(self, key: LinkKey, deleted: Mapping[str, int]) -> bool:
        """Whether `key`'s upsert can be left out: known, and neither id in `deleted`
        (the account's ids with a deletion the transaction sees; see the module's
        docstring). A known link one of whose ids was deleted is forgotten."""
        if key not in self._links:
            return False
        if key[1] in deleted or key[2] in deleted:
            del self._links[key]
            return False
        self._links.move_to_end(key)
        return True

    def remember(self, keys: Iterable[LinkKey], deleted: Mapping[int, Mapping[str, int]]) -> None:
        """Links a committed transaction stored, but those with an id in `deleted` (per
        account, as that transaction saw it at its end)."""
        links = self._links
        for key in keys:
            gone = deleted.get(key[0])
            if gone and (key[1] in gone or key[2] in gone):
                continue
            links[key] = None
            links.move_to_end(key)
        while len(links) > self._limit:
            links.popitem(last=False)
