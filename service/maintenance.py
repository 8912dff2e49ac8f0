"""Maintenance mode: while on, every ingest call is refused with UNAVAILABLE.

The bridge turns that into 503 + Retry-After, so Segment keeps the events and
retries them (for up to four hours) instead of dropping them: the way to stop
ingestion for a database migration or a move without losing anything.

The switch lives in the database, so every core on it follows; each core reads
it every `refresh_s` seconds (and at once when switched through this core).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from service.errors import StoreUnavailable, Unavailable
from service.store import SwitchStore

log = logging.getLogger(__name__)

SWITCH = "maintenance"
DEFAULT_MESSAGE = "Inlet is in maintenance; retry later"


@dataclass(frozen=True, slots=True)
class State:
    on: bool = False
    message: str = ""
    changed_at_us: int | None = None


class MaintenanceMode:
    def __init__(self, store: SwitchStore, refresh_s: float = 2.0) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self.state = State()
        #: Told when the switch is set through this process (the sibling workers of
        #: `inlet serve --workers` re-read it at once, service/worker.py).
        self.announce: Callable[[], None] | None = None

    @property
    def on(self) -> bool:
        return self.state.on

    def error(self) -> Unavailable:
        return Unavailable(self.state.message or DEFAULT_MESSAGE, "maintenance")

    async def refresh(self) -> State:
        row = await self._store.get_switch(SWITCH)
        if row is not None:
            value, changed_at_us = row
            data = orjson.loads(value)
            new = State(bool(data.get("on")), str(data.get("message", "")), changed_at_us)
            if new.on != self.state.on:
                log.warning("maintenance mode %s", "on: ingestion refused" if new.on else "off")
            self.state = new
        return self.state

    async def set(self, on: bool, message: str = "") -> State:
        value = orjson.dumps({"on": on, "message": message}).decode()
        await self._store.set_switch(SWITCH, value)
        if self.announce is not None:
            self.announce()
        return await self.refresh()

    async def follow(self) -> None:
        """Re-read the switch forever (run as a task; cancel to stop). A store that
        cannot be read keeps the last known state."""
        while True:
            try:
                await self.refresh()
            except StoreUnavailable:
                log.warning("cannot read the maintenance switch; keeping %s", self.state.on)
            await asyncio.sleep(self._refresh_s)
