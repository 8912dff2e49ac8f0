"""`inlet keys`, `inlet accounts`, `inlet maintenance`, `inlet prune`, `inlet migrate`:
operator commands that work on the database directly (no server needed; running cores
notice within seconds)."""

from __future__ import annotations

import argparse
import sys
import time

from service import keys
from service.admin_servicer import ACCOUNT_NAME
from service.maintenance import MaintenanceMode
from service.retention import Retention
from service.store import Account, AccountStore, EventStore, Store, StoreError, SwitchStore
from service.timestamps import format_micros, now_us, parse_duration_s, parse_timestamp


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    database: argparse.ArgumentParser,
) -> None:
    """Add these commands to `commands`; `database` is the parent parser of --database."""
    key_cmd = commands.add_parser("keys", help="manage API keys (directly in the database)")
    key_actions = key_cmd.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser(
        "create", parents=[database], help="create a key; prints it once"
    )
    create.add_argument("--account", required=True, help="account name (created if new)")
    create.add_argument("--scope", default="ingest", help="comma-separated: ingest,read,admin")
    create.add_argument("--label", default="", help="a note to recognise the key by")
    create.add_argument("--expires", help="ISO date/time, or a duration such as 30d, 12h")
    listing = key_actions.add_parser("list", parents=[database], help="list keys (never secrets)")
    listing.add_argument("--account", help="only this account's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = key_actions.add_parser("revoke", parents=[database], help="revoke a key by its id")
    revoke.add_argument("key_id")
    commands.add_parser(
        "migrate",
        parents=[database],
        help="bring the database schema up to date (cores also do it when they start)",
    )

    accounts = commands.add_parser("accounts", help="manage accounts (directly in the database)")
    actions = accounts.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[database], help="create an account")
    create.add_argument("name", help="1-100 letters, digits, '.', '_' or '-'")
    _suppress_option(create, required=False)
    actions.add_parser("list", parents=[database], help="list accounts")
    for verb, text in (("suspend", "refuse its events (403)"), ("resume", "accept them again")):
        action = actions.add_parser(verb, parents=[database], help=f"{verb} an account: {text}")
        action.add_argument("name")
    settings = actions.add_parser("set", parents=[database], help="change an account's settings")
    settings.add_argument("name")
    _suppress_option(settings, required=True)

    rotate = key_actions.add_parser(
        "rotate", parents=[database], help="replace a key; the old one works a while longer"
    )
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--overlap", default="24h", help="how long the old key keeps working (30d, 12h, 15m, 0m)"
    )

    maintenance = commands.add_parser(
        "maintenance",
        parents=[database],
        help="refuse ingestion with 503 (Segment retries) while on",
    )
    maintenance.add_argument("state", choices=("on", "off", "status"))
    maintenance.add_argument("--message", default="", help="shown to senders in the 503")

    prune = commands.add_parser(
        "prune",
        parents=[database],
        help="delete events received longer ago than a window, now (what --retention does "
        "every minute); profiles stay",
    )
    prune.add_argument("--older-than", required=True, help="at least 1d: 30d, 72h, ...")


async def run(store: Store, args: argparse.Namespace) -> int:
    """The command `args` names, on `store` (open; not migrated for `migrate`)."""
    if args.command == "migrate":
        return await migrate(store)
    if args.command == "accounts":
        return await accounts(store, args)
    if args.command == "maintenance":
        return await maintenance(store, args)
    if args.command == "prune":
        return await prune(store, args)
    return await keys_command(store, args)


async def migrate(store: Store) -> int:
    """`inlet migrate`: apply what the schema lacks (safe beside running cores)."""
    before, after = await store.migrate()
    if before == after:
        print(f"schema is up to date (version {after})")
    else:
        print(f"schema migrated from version {before} to {after}")
    return 0


async def keys_command(store: AccountStore, args: argparse.Namespace) -> int:
    """`inlet keys create|list|revoke|rotate`."""
    if args.action == "rotate":
        return await rotate(store, args)
    if args.action == "create":
        scopes = keys.parse_scopes(args.scope)
        expires = parse_expiry(args.expires) if args.expires else None
        account = await store.ensure_account(args.account)
        new = keys.generate_key()
        record = await store.create_key(
            account.id, new.key_id, new.secret_hash, scopes, args.label, expires
        )
        print(
            f"created key {record.key_id} for account {account.name!r} "
            f"(scopes {','.join(record.scopes)}, expires {_when(expires)}); "
            "it is shown only once:",
            file=sys.stderr,
        )
        print(new.plaintext)
    elif args.action == "list":
        account_id = None
        if args.account:
            found = await store.get_account(args.account)
            if found is None:
                raise StoreError(f"no account named {args.account!r}")
            account_id = found.id
        print(
            f"{'KEY ID':<18} {'ACCOUNT':<20} {'SCOPES':<18} {'CREATED':<25} "
            f"{'EXPIRES':<25} {'REVOKED':<25} LABEL"
        )
        for r in await store.list_keys(account_id, include_revoked=args.all):
            print(
                f"{r.key_id:<18} {r.account_name:<20} {','.join(r.scopes):<18} "
                f"{_when(r.created_at_us):<25} {_when(r.expires_at_us):<25} "
                f"{_when(r.revoked_at_us):<25} {r.label}"
            )
    elif args.action == "revoke":
        revoked = await store.revoke_key(args.key_id)
        if revoked is None:
            raise StoreError(f"no key with id {args.key_id!r}")
        print(
            f"revoked key {revoked.key_id} of account {revoked.account_name!r} "
            "(running servers notice within seconds)"
        )
    return 0


def parse_expiry(text: str, now_us: int | None = None) -> int:
    """`30d`, `12h`, `15m` from now, or an ISO date/time → µs since the epoch."""
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    try:
        return now_us + parse_duration_s(text) * 1_000_000
    except ValueError:
        pass  # a date, then
    micros = parse_timestamp(text)
    if micros is None:
        raise ValueError(f"--expires: not a date or duration: {text!r}")
    if micros <= now_us:
        raise ValueError("--expires: the date is in the past")
    return micros


def _when(micros: int | None) -> str:
    return "-" if micros is None else format_micros(micros)


def _suppress_option(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--suppress-deleted-users",
        choices=("on", "off"),
        required=required,
        default=None if required else "off",
        help="Segment's Suppress with Delete: on, every later event of a deleted user is "
        "suppressed (200, not stored); off (the default), only those from before the delete",
    )


async def accounts(store: AccountStore, args: argparse.Namespace) -> int:
    if args.action == "create":
        if not ACCOUNT_NAME.fullmatch(args.name):
            raise ValueError("account names are 1-100 letters, digits, '.', '_' or '-'")
        account = await store.create_account(args.name, args.suppress_deleted_users == "on")
        if account is None:
            raise StoreError(f"account {args.name!r} exists")
        print(f"created account {account.name!r}{_suppression(account)}")
    elif args.action == "list":
        print(f"{'ACCOUNT':<30} {'STATE':<10} {'CREATED':<25} DELETED USERS")
        for a in await store.list_accounts():
            state = "suspended" if a.suspended else "active"
            deleted = "suppressed" if a.suppress_deleted_users else "may return"
            print(f"{a.name:<30} {state:<10} {format_micros(a.created_at_us):<25} {deleted}")
    elif args.action == "set":
        on = args.suppress_deleted_users == "on"
        account = await store.set_account_suppress_deleted_users(args.name, on)
        print(
            f"account {account.name!r}{_suppression(account)} "
            "(running servers notice within seconds)"
        )
    else:
        account = await store.set_account_suspended(args.name, args.action == "suspend")
        state = "suspended" if account.suspended else "active"
        print(f"account {account.name!r} is {state} (running servers notice within seconds)")
    return 0


def _suppression(account: Account) -> str:
    if account.suppress_deleted_users:
        return ": every event of a deleted user is suppressed"
    return ": events of a deleted user from before the delete are suppressed"


async def rotate(store: AccountStore, args: argparse.Namespace) -> int:
    old = await store.get_key(args.key_id)
    if old is None:
        raise StoreError(f"no key with id {args.key_id!r}")
    new = keys.generate_key()
    try:
        until = now_us() + parse_duration_s(args.overlap) * 1_000_000
    except ValueError as exc:
        raise ValueError(f"--overlap: {exc}") from None
    record = await store.rotate_key(old.key_id, old.account_id, new.key_id, new.secret_hash, until)
    if record is None:
        raise StoreError(f"key {args.key_id!r} is revoked or expired: create a new one instead")
    print(
        f"created key {record.key_id} to replace {old.key_id} (account {old.account_name!r}, "
        f"scopes {','.join(record.scopes)}); the old key stops working at "
        f"{format_micros(min(until, old.expires_at_us or until))}. "
        "The new key is shown only once:",
        file=sys.stderr,
    )
    print(new.plaintext)
    return 0


async def maintenance(store: SwitchStore, args: argparse.Namespace) -> int:
    mode = MaintenanceMode(store)
    state = (
        await mode.refresh()
        if args.state == "status"
        else await mode.set(args.state == "on", args.message)
    )
    when = "" if state.changed_at_us is None else f" since {format_micros(state.changed_at_us)}"
    if state.on:
        print(
            f"maintenance mode is on{when}: ingestion answers 503 (Segment retries)"
            + (f"; message: {state.message}" if state.message else "")
        )
    else:
        print(f"maintenance mode is off{when}")
    return 0


async def prune(store: EventStore, args: argparse.Namespace) -> int:
    try:
        window_s = parse_duration_s(args.older_than)
    except ValueError as exc:
        raise ValueError(f"--older-than: {exc}") from None
    deleted = await Retention(store, window_s).prune()
    print(f"deleted {deleted} events received more than {args.older_than} ago")
    return 0
