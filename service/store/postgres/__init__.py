"""The PostgreSQL store: many cores on one database (scale-out), same behaviour as SQLite.

Driver: asyncpg. It speaks the binary protocol natively on the event loop (no
thread hop, no libpq to install: one wheel without dependencies), pipelines
`executemany`, ships a bounded pool and LISTEN/NOTIFY callbacks; psycopg 3 would do
too, but needs libpq (or its binary wheel) and a second package for the pool.

How the SQLite store's guarantees carry over:

* Dedupe: UNIQUE (account_id, message_id) with ON CONFLICT DO NOTHING. Two cores
  inserting the same messageId at once: the second waits for the first to commit and
  then skips the row, so both callers succeed and the event is stored once.
* Cursors: `seq` comes from a sequence, drawn at insert time, so ingest
  transactions of every core run and commit at once, in any order. A reader must
  then never move past a number that is still to be committed: before it draws,
  each ingest transaction takes a shared advisory lock on its *floor* (the lowest
  number it can draw), and readers only go up to the *feed horizon*, the lowest
  floor in flight (schema.py's inlet_feed_state says why that is safe). Below
  the horizon every seq is committed or will never exist; a transaction held open
  holds back readers, never other writers. A core killed mid-transaction loses its
  connection, the server rolls the transaction back and its lock goes with it.
* Group commit: up to `commits_in_flight` ingest transactions per process at once;
  concurrent batches queue and the next transaction takes them all
  (AsyncGroupCommitter).
* Subscribe across cores: after each commit the store NOTIFYs, outside the ingest
  transaction (a transaction that NOTIFYs takes a database-wide lock at commit,
  which would order every core's commits again), at most one at a time per process;
  every store LISTENs on its own connection and publishes its CommitSignal, so
  streams on every core wake at once. While transactions are in flight a reader
  that read up to the horizon re-reads shortly, so a rolled-back transaction (which
  notifies nobody) does not leave it waiting for the slow poll. The listener
  reconnects by itself (and wakes the streams then, for commits it may have missed).
* Deletes: the ingest transaction records the deletion (and its ids, whose later events
  are suppressed from then on: suppression.py); an eraser in the background erases what
  is stored of the ids once no transaction that could have missed the record is still in
  flight, so a delete never holds up the commits of other events (Eraser).
* Failures: connection loss, refusal, shutdown, timeouts, full disk are
  StoreUnavailable (gRPC UNAVAILABLE, HTTP 503, Segment retries); the pool makes new
  connections as the server comes back, so no restart is needed.

By concern: `database.py` (options, the pool, LISTEN, what is transient, the feed
horizon), `schema.py` (migrations), `events.py` (the ingest transaction, the feed,
retention), `eraser.py` (deletions erased in the background), `projected.py` (the
profile tables' writes, the linked ids), `profiles.py`, `accounts.py` (accounts, keys,
switches).
"""

from __future__ import annotations

from service.store.postgres.accounts import PostgresAccounts
from service.store.postgres.database import CHANNEL, PostgresOptions, is_transient
from service.store.postgres.events import PostgresEvents
from service.store.postgres.profiles import PostgresProfiles
from service.store.postgres.projected import Projected

__all__ = ["CHANNEL", "PostgresOptions", "PostgresStore", "Projected", "is_transient"]


class PostgresStore(PostgresEvents, PostgresProfiles, PostgresAccounts):
    """Store on a PostgreSQL database. Create it, `await open()`, use it, `await close()`.

    Bound to the event loop it is opened on (asyncpg connections are).
    """
