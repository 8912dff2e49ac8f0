"""What a PostgreSQL database's client backends are doing, and which they are.

WaitSampler samples pg_stat_activity joined with the ungranted rows of pg_locks every
20 ms on a thread of its own: per backend on CPU, waiting for its client's next statement
inside a transaction, or waiting on a lock (which one) or on I/O. It is one more client
of the server: compare phases measured with it to each other.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

_SAMPLE = """
    SELECT a.state, a.wait_event_type, a.wait_event, l.locktype, l.mode, l.classid,
           l.relation::regclass::text
    FROM pg_stat_activity a
    LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
    WHERE a.datname = $1 AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
"""


def wait_category(row: tuple[Any, ...]) -> str | None:
    """What one backend is doing, as a short label; None when it is idle (no transaction)."""
    state, kind, event, locktype, mode, classid, relation = row
    if state == "idle":
        return None
    if state and state.startswith("idle in transaction"):
        return "in transaction, waiting for the client's next statement"
    if kind is None:
        return "on CPU"
    if kind == "Lock":
        # pg_locks is read a moment after pg_stat_activity: a wait that ended in between
        # has no row there, and wait_event names the lock's type.
        locktype = locktype or event
        if locktype == "object" and classid == 1262:
            return "Lock: NOTIFY's commit lock (object of pg_database)"
        if locktype in ("transactionid", "tuple"):
            return f"Lock: row lock ({locktype})"
        return " ".join(["Lock:", locktype, *(part for part in (mode, relation) if part)])
    return f"{kind}: {event}"


class WaitSampler:
    """Samples pg_stat_activity/pg_locks for one database on a thread of its own."""

    def __init__(self, dsn: str, database: str, interval_s: float = 0.02) -> None:
        self._dsn, self._database, self._interval = dsn, database, interval_s
        self._stop = threading.Event()
        self.samples = 0
        self.busy: Counter[str] = Counter()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    async def _run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(_SAMPLE, self._database)
                self.samples += 1
                for row in rows:
                    label = wait_category(tuple(row))
                    if label is not None:
                        self.busy[label] += 1
                await asyncio.sleep(self._interval)
        finally:
            await conn.close()

    def summary(self) -> dict[str, Any]:
        """Per label: the mean number of backends in that state (over all samples) and its
        share of all non-idle backend time."""
        total = sum(self.busy.values()) or 1
        return {
            "samples": self.samples,
            "busy_backends_mean": sum(self.busy.values()) / max(self.samples, 1),
            "states": {
                label: {
                    "backends_mean": round(count / max(self.samples, 1), 3),
                    "share": round(count / total, 3),
                }
                for label, count in self.busy.most_common()
            },
        }


def backend_pids(dsn: str, database: str) -> list[int]:
    import asyncpg

    async def fetch() -> list[int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            return [int(row[0]) for row in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())
