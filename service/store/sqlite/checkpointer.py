"""Checkpoints of SQLite's write-ahead log, mostly on a thread of their own.

In WAL mode a commit appends the pages it changed to the `-wal` file and fsyncs it;
a *checkpoint* later copies those pages into the database file and fsyncs that. Left
to itself, SQLite runs the checkpoint inside the COMMIT that takes the log past 1,000
pages, so every few groups one commit also pays for the whole copy and a second fsync
while it holds the write lock, and every event waiting for the next group waits too.

`WalCheckpointer` does the bulk of that copying on its own connection and thread, with
PASSIVE checkpoints (they never wait for, nor block, writers or readers), at most every
`interval_s` and only after commits. A PASSIVE checkpoint under load always ends with
newer commits in the log, though, and SQLite restarts the log (writes it from its
start again) only when a write transaction begins with every page copied. So once the
thread has copied a long log up to its end, it asks the writer for a *catch-up*: right
after its next COMMIT, still holding the store's write lock, the writer checkpoints the
pages committed since (`after_commit`): what was committed while the thread's copy
ran, usually a few groups, but copied and fsynced while ingest waits. The transaction
after it then starts the log over, unless a read that began before the catch-up still
holds its snapshot (the thread asks again after its next checkpoint). The writer
connection keeps SQLite's own checkpoint as a backstop at `backstop_pages`, reached
only when the thread falls behind or readers pin the log.

A checkpoint failing loses nothing (the pages stay in the log, and are read from there):
it is logged, and tried again after the next commit on a new connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

from service.logs import RateLimitedLog

log = logging.getLogger(__name__)

#: Each kind of warning is logged at most this often (a full disk fails every try).
_WARN_EVERY_S: Final = 60.0


@dataclass(frozen=True)
class CheckpointSettings:
    #: Least time between two checkpoints of the thread: a busy file gets a few large
    #: copies rather than one per commit (each ends in an fsync of the database file).
    interval_s: float = 0.2
    #: A log at least this long, once copied to its end, is restarted by a catch-up in
    #: the writer: ~8 MB at SQLite's default 4 KiB pages.
    catch_up_pages: int = 2_000
    #: The writer connection's own threshold (`PRAGMA wal_autocheckpoint`), ~40 MB.
    backstop_pages: int = 10_000
    #: `PRAGMA journal_size_limit` of the writer: when the log starts over, the `-wal`
    #: file is cut back to this. SQLite otherwise reuses the file and never shrinks it
    #: until the store closes, so one long read that pinned the log (an export, a
    #: stalled checkpoint) would leave gigabytes on disk for the life of the process.
    #: Well above the 8-16 MB a busy log reaches, so it is not cut and regrown each time.
    wal_size_limit_bytes: int = 64 * 1024 * 1024


class Checkpoint(NamedTuple):
    """`PRAGMA wal_checkpoint`'s answer: whether another connection was checkpointing
    (then the counts are -1: this one did nothing), the pages in the log and how many
    of them are in the database file (-1 and -1 too when the file is not in WAL mode)."""

    busy: bool
    log_pages: int
    checkpointed_pages: int


def checkpoint(conn: sqlite3.Connection) -> Checkpoint:
    """One PASSIVE checkpoint on `conn`: copy what no reader still needs, wait for nobody."""
    busy, log_pages, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return Checkpoint(bool(busy), log_pages, done)


class WalCheckpointer:
    """Checkpoints a SQLite file from a thread of its own. `start()`; after each commit
    call `after_commit(writer connection)` before anyone writes again; `stop()` before
    closing the writer connection."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        settings: CheckpointSettings | None = None,
    ) -> None:
        self._connect = connect
        self.settings = settings or CheckpointSettings()
        self._pending = threading.Event()  # a commit since the last checkpoint began
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warnings = RateLimitedLog(log, _WARN_EVERY_S)
        #: Set by the thread, read and cleared by the writer (a plain attribute: a
        #: stale read only moves the catch-up to the next commit).
        self.catch_up_due = False
        #: The latest answer that was not `busy`, and counts (`failures`: the thread's
        #: and the catch-ups'): for metrics and tests.
        self.last: Checkpoint | None = None
        self.runs = 0
        self.failures = 0
        self.catch_ups = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the checkpoint thread is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="inlet-checkpoint", daemon=True)
        self._thread.start()

    def after_commit(self, writer: sqlite3.Connection) -> None:
        """Pages were committed on `writer`, which no one else uses until this returns:
        wake the thread (cheap; never blocks) and, when it asks, run the catch-up.

        A busy catch-up (the thread was copying) did nothing: the next commit tries
        again. A failed one is counted, warned about now and then and left to the
        thread to ask for again; it never fails the commit, which has happened."""
        self._pending.set()
        if not self.catch_up_due:
            return
        try:
            result = checkpoint(writer)
        except Exception as exc:  # noqa: BLE001 - committed all the same: never fail it
            self.catch_up_due = False
            self.failures += 1
            self._warnings.warning("catch-up", f"the catch-up WAL checkpoint failed ({exc})")
            return
        if not result.busy:
            self.catch_up_due = False
            self.catch_ups += 1
            self.last = result

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
                    self._record(checkpoint(conn))
                except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                    self.failures += 1
                    self._warnings.warning(
                        "failed",
                        f"the WAL checkpoint failed ({exc}); retrying after the next commit",
                    )
                    if conn is not None:
                        conn.close()
                        conn = None
                self._stop.wait(self.settings.interval_s - (time.monotonic() - started))
        finally:
            if conn is not None:
                conn.close()

    def _record(self, result: Checkpoint) -> None:
        if result.busy:  # the backstop, a catch-up or another process was copying
            return
        self.last = result
        self.runs += 1
        pages, copied = result.log_pages, result.checkpointed_pages
        if pages >= self.settings.catch_up_pages and copied == pages:
            self.catch_up_due = True
        if pages > self.settings.backstop_pages:
            # Commits then run SQLite's checkpoint themselves, the slow way; a reader
            # holding an old snapshot keeps pages from being copied or the log restarted.
            self._warnings.warning(
                "long",
                f"the write-ahead log holds {pages} pages ({copied} "
                "copied): checkpoints are falling behind, or a long read "
                "is pinning it",
            )
