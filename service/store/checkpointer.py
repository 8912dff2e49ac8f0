"""Checkpoints of SQLite's write-ahead log, on a thread of their own.

In WAL mode a commit appends the pages it changed to the `-wal` file and fsyncs it;
a *checkpoint* later copies those pages into the database file and fsyncs that. Left
to itself, SQLite runs the checkpoint inside the COMMIT that takes the log past 1,000
pages, so every few groups one commit also pays for the copy and a second fsync while
it holds the write lock, and every event waiting for the next group waits with it.
Events carry random messageIds (Segment's are UUIDs), so on a file in service each
insert dirties its own page of the messageId index: a group of 500 writes ~500 pages,
and with checkpoints inside commits a 1M-event file took 19-24k events/s over gRPC.

`WalCheckpointer` runs PASSIVE checkpoints (they never wait for, nor block, writers or
readers) on its own connection and thread, at most every `interval_s` and only after
commits. The writer connection keeps SQLite's own checkpoint as a backstop at
`BACKSTOP_PAGES`: reached only when this thread falls behind (a slow disk), or when
the log cannot restart because every checkpoint ends with newer commits in it. A
checkpoint failing loses nothing (the pages stay in the log, and are still read from
there): it is logged and tried again after the next commit.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Final, NamedTuple

log = logging.getLogger(__name__)

#: The writer connection's own checkpoint threshold (`PRAGMA wal_autocheckpoint`),
#: in pages: ~40 MB of log at SQLite's default 4 KiB pages, i.e. about two seconds
#: of the fastest ingest measured here.
BACKSTOP_PAGES: Final = 10_000
#: Failures are logged at most this often (a full disk fails every try).
_WARN_EVERY_S: Final = 60.0


class Checkpoint(NamedTuple):
    """`PRAGMA wal_checkpoint`'s answer: pages in the log, and how many of them are
    now in the database file (-1, -1 when the file is not in WAL mode)."""

    busy: bool  # another connection was checkpointing: this one did nothing
    log_pages: int
    checkpointed_pages: int


class WalCheckpointer:
    """Checkpoints a SQLite file from a thread of its own. `start()`, call `committed()`
    after each commit, `stop()` before closing the writer connection."""

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], *, interval_s: float = 0.2
    ) -> None:
        self._connect = connect
        self.interval_s = interval_s
        self._pending = threading.Event()  # a commit since the last checkpoint began
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -_WARN_EVERY_S
        #: The latest checkpoint's answer, how many ran and failed: for metrics and tests.
        self.last: Checkpoint | None = None
        self.runs = 0
        self.failures = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="inlet-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """Pages were committed: checkpoint them soon. Cheap; never blocks."""
        self._pending.set()

    def stop(self) -> None:
        """Let a running checkpoint finish and end the thread. Closing the last
        connection to the file checkpoints what is left, so nothing is owed."""
        self._stop.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._pending.wait()
                if self._stop.is_set():
                    return
                self._pending.clear()
                started = time.monotonic()
                try:
                    if conn is None:
                        conn = self._connect()
                    self.last = checkpoint(conn)
                    self.runs += 1
                except sqlite3.Error as exc:
                    self.failures += 1
                    self._warn(f"the WAL checkpoint failed ({exc}); retrying after the next commit")
                else:
                    if self.last.log_pages > BACKSTOP_PAGES:
                        # Commits then run SQLite's checkpoint themselves, slower; a
                        # reader holding an old snapshot can keep the log from restarting.
                        self._warn(
                            f"the write-ahead log holds {self.last.log_pages} pages: "
                            "checkpoints are not keeping up, or a long read is pinning it"
                        )
                # Pace: at most one checkpoint per interval, so a busy file gets a few
                # large copies rather than one per commit (each ends in an fsync).
                self._stop.wait(self.interval_s - (time.monotonic() - started))
        finally:
            if conn is not None:
                conn.close()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(message)


def checkpoint(conn: sqlite3.Connection) -> Checkpoint:
    """One PASSIVE checkpoint on `conn`: copy what no reader still needs, wait for nobody."""
    busy, log_pages, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return Checkpoint(bool(busy), log_pages, done)
