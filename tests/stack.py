"""A real Inlet stack for tests: grpc.aio core on a temporary SQLite file (or a given
PostgreSQL DSN) plus the bridge.

`Stack` runs in the test's own event loop (async tests). `LiveStack` runs the
same thing on a loop in a background thread, for synchronous clients such as
Schemathesis (which calls the server with `requests`).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from http_bridge.config import BridgeConfig
from http_bridge.server import BridgeServer, start_bridge
from service import keys
from service.config import CoreConfig
from service.server import CoreServer, start_core
from service.store import SqliteStore, Store, open_store

T = TypeVar("T")


def basic(api_key: str) -> str:
    """The Authorization header Segment sends for `api_key`."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


@dataclass
class Stack:
    core: CoreServer
    bridge: BridgeServer
    store: Store
    keys: dict[str, str] = field(default_factory=dict)
    account_ids: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bridge.port}"

    @property
    def core_target(self) -> str:
        return f"127.0.0.1:{self.core.port}"

    async def add_key(
        self,
        name: str,
        account: str = "acme",
        scopes: tuple[str, ...] = ("ingest",),
        expires_at_us: int | None = None,
    ) -> str:
        record = await self.store.ensure_account(account)
        new = keys.generate_key()
        await self.store.create_key(
            record.id, new.key_id, new.secret_hash, scopes, name, expires_at_us
        )
        self.keys[name] = new.plaintext
        self.account_ids[account] = record.id
        return new.plaintext

    async def stop(self) -> None:
        await self.bridge.stop()
        await self.core.stop(grace=1.0)


async def start_stack(
    data_dir: Path,
    core_config: CoreConfig | None = None,
    bridge_config: BridgeConfig | None = None,
    busy_timeout_ms: int = 2000,
    database: str | None = None,
    registry: CollectorRegistry | None = None,
) -> Stack:
    """`database`: a postgresql:// DSN to use instead of SQLite under `data_dir`.
    `registry`: one for both halves (as `inlet serve` has), else one each."""
    config = core_config or CoreConfig(listen="127.0.0.1:0")
    store: Store
    if database is None:
        store = SqliteStore(data_dir / "inlet.db", busy_timeout_ms=busy_timeout_ms)
    else:
        store = open_store(database, pool_size=4)
    core = await start_core(config, store, registry)
    bridge_config = bridge_config or BridgeConfig(host="127.0.0.1", port=0)
    bridge_config = dataclasses.replace(bridge_config, core_target=f"127.0.0.1:{core.port}")
    bridge = await start_bridge(bridge_config, registry=registry)
    stack = Stack(core, bridge, store)
    await stack.add_key("ingest")
    await stack.add_key("admin", scopes=("ingest", "read", "admin"))
    return stack


class LiveStack:
    """A Stack served from a background thread's event loop."""

    def __init__(self, data_dir: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.stack = self.run(start_stack(data_dir))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run `coro` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        self.run(self.stack.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
