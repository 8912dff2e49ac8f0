"""`inlet accounts`, `inlet keys rotate`, `inlet maintenance`: operator commands that
work on the database directly, like `inlet keys create` (no server needed; running
cores notice within seconds)."""

from __future__ import annotations

import argparse
import sys

from service import keys
from service.admin_servicer import ACCOUNT_NAME
from service.maintenance import MaintenanceMode
from service.retention import Retention
from service.store import Account, AccountStore, EventStore, StoreError, SwitchStore
from service.timestamps import format_micros, now_us, parse_duration_s


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    key_actions: argparse._SubParsersAction[argparse.ArgumentParser],
    database: argparse.ArgumentParser,
) -> None:
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
