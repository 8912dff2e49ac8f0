"""The SQLite schema: its migrations, and the function that applies them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from service.store.base import StoreError

# Versioned schema. Append, never edit: each entry runs once, in order, and
# `PRAGMA user_version` records how far a database has come.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE accounts (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        suspended     INTEGER NOT NULL DEFAULT 0,
        created_at_us INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        key_id        TEXT PRIMARY KEY,
        account_id    INTEGER NOT NULL REFERENCES accounts(id),
        secret_hash   BLOB NOT NULL,
        scopes        TEXT NOT NULL,
        label         TEXT NOT NULL DEFAULT '',
        created_at_us INTEGER NOT NULL,
        expires_at_us INTEGER,
        revoked_at_us INTEGER
    );
    CREATE INDEX api_keys_account ON api_keys(account_id);
    -- AUTOINCREMENT: sequence numbers are never reused, even after deletions,
    -- so they can serve as stable cursors.
    CREATE TABLE events (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id     INTEGER NOT NULL REFERENCES accounts(id),
        message_id     TEXT NOT NULL,
        type           TEXT NOT NULL,
        user_id        TEXT,
        anonymous_id   TEXT,
        name           TEXT,
        group_id       TEXT,
        previous_id    TEXT,
        timestamp_us   INTEGER NOT NULL,
        received_at_us INTEGER NOT NULL,
        key_id         TEXT NOT NULL,
        payload        BLOB NOT NULL,
        settings       BLOB,
        UNIQUE (account_id, message_id)
    );
    """,
    # 2: profiles (projections.py), history and subscription indexes, switches.
    """
    CREATE INDEX events_account_seq ON events(account_id, seq);
    -- Whose event it is: the userId, else the anonymousId, and NULL for delete events
    -- (they belong to no profile, and stay as the record of deletions). One index
    -- finds a profile's events, because an event carrying both ids also links
    -- them (identity_links): its anonymousId is reached through the link. (Two
    -- indexes, userId and anonymousId, cost twice as much on every insert.)
    ALTER TABLE events ADD COLUMN subject TEXT;
    UPDATE events SET subject = coalesce(user_id, anonymous_id) WHERE type != 'delete';
    CREATE INDEX events_subject ON events(account_id, subject);
    -- Each link is stored in both directions, so a profile is one recursive walk.
    -- kind: what `other` is, seen from `id` (projections.py): 'alias', 'anonymous', 'user'.
    CREATE TABLE identity_links (
        account_id INTEGER NOT NULL,
        id         TEXT NOT NULL,
        other      TEXT NOT NULL,
        kind       TEXT NOT NULL,
        PRIMARY KEY (account_id, id, other)
    ) WITHOUT ROWID;
    -- Links of events stored before this version (their traits are not backfilled).
    INSERT OR IGNORE INTO identity_links
        SELECT account_id, user_id, anonymous_id, 'anonymous' FROM events
        WHERE user_id IS NOT NULL AND anonymous_id IS NOT NULL AND user_id != anonymous_id
        UNION ALL
        SELECT account_id, anonymous_id, user_id, 'user' FROM events
        WHERE user_id IS NOT NULL AND anonymous_id IS NOT NULL AND user_id != anonymous_id;
    -- subject_kind 'user' (identify traits by userId/anonymousId) or 'group'.
    CREATE TABLE traits (
        account_id   INTEGER NOT NULL,
        subject_kind TEXT NOT NULL,
        subject_id   TEXT NOT NULL,
        key          TEXT NOT NULL,
        value        BLOB NOT NULL,
        timestamp_us INTEGER NOT NULL,
        message_id   TEXT NOT NULL,
        PRIMARY KEY (account_id, subject_kind, subject_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE memberships (
        account_id   INTEGER NOT NULL,
        member_id    TEXT NOT NULL,
        group_id     TEXT NOT NULL,
        timestamp_us INTEGER NOT NULL,
        PRIMARY KEY (account_id, member_id, group_id)
    ) WITHOUT ROWID;
    -- The record that a deletion happened (not the data): who, when, how much.
    CREATE TABLE deletions (
        id              INTEGER PRIMARY KEY,
        account_id      INTEGER NOT NULL REFERENCES accounts(id),
        user_id         TEXT NOT NULL,
        message_id      TEXT NOT NULL,
        requested_at_us INTEGER NOT NULL,
        erased_ids      INTEGER NOT NULL,
        erased_events   INTEGER NOT NULL
    );
    CREATE TABLE switches (
        name          TEXT PRIMARY KEY,
        value         TEXT NOT NULL,
        changed_at_us INTEGER NOT NULL
    );
    """,
    # 3: deleted users stay deleted (service/suppression.py).
    """
    ALTER TABLE accounts ADD COLUMN suppress_deleted_users INTEGER NOT NULL DEFAULT 0;
    -- The delete's own time (receivedAt, else timestamp): the events it covers are older.
    ALTER TABLE deletions ADD COLUMN deleted_at_us INTEGER NOT NULL DEFAULT 0;
    UPDATE deletions SET deleted_at_us = requested_at_us;
    -- Each id linked to the user when the delete was stored, with the delete's time.
    CREATE TABLE deleted_ids (
        account_id    INTEGER NOT NULL,
        id            TEXT NOT NULL,
        deletion_id   INTEGER NOT NULL REFERENCES deletions(id),
        deleted_at_us INTEGER NOT NULL,
        PRIMARY KEY (account_id, id, deletion_id)
    ) WITHOUT ROWID;
    -- Deletions stored before: their links are gone, so only the user's own id is known,
    -- and the time Inlet stored them stands in (a little later: it covers a little more).
    INSERT INTO deleted_ids SELECT account_id, user_id, id, requested_at_us FROM deletions;
    -- A delete event is part of its user's history (ListEvents' user filter) and of no
    -- profile: erasures and profiles leave delete events out.
    UPDATE events SET subject = user_id WHERE type = 'delete';
    """,
    # 4: the event's type in the subject's index: erasing a user deleted many times, or
    # counting their events, searches each type (rows.NOT_A_DELETE) instead of reading
    # every delete event stored for them.
    """
    CREATE INDEX events_subject_type ON events(account_id, subject, type);
    DROP INDEX events_subject;
    """,
    # 5: the ids of the deletions made since a point: a process sharing the file
    # (`--workers`) forgets the links those erased from its cache, not all it knows.
    """
    CREATE INDEX deleted_ids_deletion ON deleted_ids(deletion_id);
    """,
    # 6: a delete records which events it leaves to erase (its ids' events stored before
    # it); the eraser (eraser.py) erases them after the commit, a burst of deletes in one
    # transaction, and readers leave them out meanwhile. Deletions stored before this
    # version were erased as they were stored.
    """
    CREATE TABLE erasing (
        account_id  INTEGER NOT NULL,
        id          TEXT NOT NULL,
        before_seq  INTEGER NOT NULL,
        deletion_id INTEGER NOT NULL REFERENCES deletions(id),
        PRIMARY KEY (account_id, id, before_seq)
    ) WITHOUT ROWID;
    """,
)


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> tuple[int, int]:
    """Bring the file on `conn` (outside a transaction) to the newest version of
    `migrations`: each runs once, in order. Returns the versions before and after.
    `migrations` other than MIGRATIONS: a file as an older Inlet left it (tests)."""
    # BEGIN IMMEDIATE takes the write lock first, so two processes starting on
    # one new file cannot both apply the same migration.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = before = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise StoreError(
                f"the database is at schema version {version}, newer than this "
                f"Inlet knows ({len(migrations)}): upgrade Inlet"
            )
        for version, script in enumerate(migrations[before:], start=before + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before, version
