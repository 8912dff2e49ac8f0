"""The embedded SQLite store (the default): WAL, group commit, one writer connection.

One connection writes, its use ordered by an asyncio lock, so SQLite never contends
with itself inside a process. Event groups insert on the event loop (short statements;
sqlite3 drops the GIL around each, and a hop to a thread per statement cost more than
it saved); what may wait or take long runs on the one writer thread, so the loop never
blocks on disk or on another process's lock: COMMIT (the fsync), a BEGIN that must
wait, the erasure of deleted users' events (`eraser.py`, in the background after the
delete's commit), and the other writes (keys, accounts, migrations). Reads run on a pool
of reader threads, each with its own connection.
Other processes (the `inlet keys` command beside a running server) share the file
through SQLite's own locking; `busy_timeout` makes them wait briefly, not fail.

Durability: `synchronous=FULL` by default, so a committed event survives a power
cut, not only a crash. Group commit (../group_commit.py) keeps that affordable.

By concern: `database.py` (the connections, their threads, transactions, WAL),
`schema.py` (migrations), `checkpointer.py` (the WAL's checkpoints), `events.py`
(the write path, history, retention), `eraser.py` (deleted users' events),
`profiles.py`, `accounts.py` (accounts, keys, switches).
"""

from __future__ import annotations

from service.store.sqlite.accounts import SqliteAccounts
from service.store.sqlite.database import WriterLock
from service.store.sqlite.events import SqliteEvents
from service.store.sqlite.profiles import SqliteProfiles

__all__ = ["SqliteStore", "WriterLock"]


class SqliteStore(SqliteEvents, SqliteProfiles, SqliteAccounts):
    """Store on one SQLite file. Create it, `await open()`, use it, `await close()`."""
