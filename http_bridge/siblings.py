"""The debugger across the workers of `inlet serve --workers N`.

Each worker records the requests it answers in its own ring (recorder.py). The worker
that answers a `/debugger/api/...` request asks each sibling for its part over a Unix
socket in the supervisor's private folder (`w<i>.http`, reachable only by the user
running Inlet; served by debugger.serve_ring), after checking the caller's key itself:
the sibling trusts the viewer it is told. A sibling that does not answer within `TIMEOUT_S` (being replaced, say) is
left out of that answer; the rest still shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 1.0
ALL: Final = "*"
"""The viewer named in a sibling's query when the caller may see every account."""


class Siblings:
    """The other workers' rings, as the answering worker reads them."""

    def __init__(self, paths: dict[int, Path]) -> None:
        """`paths`: each sibling's number and ring socket."""
        self._paths = paths
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def _session(self, worker: int) -> aiohttp.ClientSession:
        session = self._sessions.get(worker)
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(path=str(self._paths[worker]))
            session = self._sessions[worker] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
            )
        return session

    async def _get(self, worker: int, path: str, query: dict[str, str]) -> Any:
        """The JSON a sibling answers; None if it does not (not found, or not there)."""
        try:
            async with self._session(worker).get("http://worker" + path, params=query) as reply:
                if reply.status != 200:
                    return None
                return orjson.loads(await reply.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            log.debug("worker %d's debugger ring not read: %r", worker, exc)
            return None

    async def listing(
        self,
        viewer: str | None,
        after: int,
        before: int,
        account: str | None = None,
        kind: str | None = None,
        outcome: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every sibling's summaries (as debugger.listing), concatenated."""
        query = {"viewer": viewer or ALL, "after": str(after), "before": str(before)}
        for name, value in (("account", account), ("type", kind), ("outcome", outcome)):
            if value:
                query[name] = value
        parts: Sequence[Any] = await asyncio.gather(
            *(self._get(worker, "/exchanges", query) for worker in self._paths)
        )
        return [summary for part in parts if isinstance(part, list) for summary in part]

    async def detail(self, worker: int, id: int, viewer: str | None) -> dict[str, Any] | None:
        if worker not in self._paths:
            return None
        found = await self._get(worker, f"/exchanges/{id}", {"viewer": viewer or ALL})
        return found if isinstance(found, dict) else None

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()


SIBLINGS: Final = web.AppKey("siblings", Siblings)
