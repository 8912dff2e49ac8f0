"""`inlet profile get`, `inlet events list`, `inlet events tail`: the read API from a
shell, over gRPC like any internal service (a key with the `read` scope)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import grpc
import orjson
from google.protobuf import json_format, timestamp_pb2

from inlet.v1 import events_pb2, events_pb2_grpc, profiles_pb2, profiles_pb2_grpc
from service.config import DEFAULT_CORE_LISTEN
from service.timestamps import parse_timestamp

log = logging.getLogger("inlet")

#: Reconnect delays for `events tail` after the core went away (seconds).
_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--core", help=f"core address (env INLET_CORE, default {DEFAULT_CORE_LISTEN})"
    )
    client.add_argument("--key", help="API key with the `read` scope (env INLET_API_KEY)")

    profile = commands.add_parser("profile", help="look up a user's merged profile (gRPC)")
    profile_actions = profile.add_subparsers(dest="action", required=True)
    get = profile_actions.add_parser("get", parents=[client], help="print a profile as JSON")
    get.add_argument("id", help="a userId or anonymousId")

    events = commands.add_parser("events", help="read stored events (gRPC)")
    actions = events.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[client], help="one JSON event per line")
    listing.add_argument("--user", help="a user's events (any linked id)")
    listing.add_argument("--type", action="append", default=[], help="repeatable")
    listing.add_argument("--name", help="track event name / page or screen name")
    listing.add_argument("--since", help="event timestamp from (ISO date/time)")
    listing.add_argument("--until", help="event timestamp before (ISO date/time)")
    listing.add_argument("--newest-first", action="store_true")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--page-token", default="", help="continue where a listing stopped")
    tail = actions.add_parser(
        "tail", parents=[client], help="follow new events, one JSON per line (Subscribe)"
    )
    tail.add_argument("--after", type=int, help="start after this sequence (default: from now)")
    tail.add_argument("--all", action="store_true", help="start from the account's first event")
    tail.add_argument("--type", action="append", default=[], help="repeatable")
    tail.add_argument(
        "--cursor-file",
        type=Path,
        help="remember the last sequence printed here and resume from it next time",
    )


def _target(args: argparse.Namespace) -> tuple[str, list[tuple[str, str]]]:
    key = args.key or os.environ.get("INLET_API_KEY")
    if not key:
        raise ValueError("an API key with the `read` scope is needed: --key or INLET_API_KEY")
    target = args.core or os.environ.get("INLET_CORE") or DEFAULT_CORE_LISTEN
    return target, [("authorization", f"Bearer {key}")]


def event_line(event: events_pb2.StoredEvent) -> bytes:
    """One stored event as a JSON line: where it is and what was received."""
    return (
        orjson.dumps(
            {
                "sequence": event.sequence,
                "messageId": event.message_id,
                "type": event.type,
                "receivedAt": event.received_at.ToJsonString(),
                "event": orjson.loads(event.json),
            }
        )
        + b"\n"
    )


def _timestamp(text: str | None, flag: str) -> timestamp_pb2.Timestamp | None:
    if text is None:
        return None
    micros = parse_timestamp(text)
    if micros is None:
        raise ValueError(f"{flag}: not a date/time: {text!r}")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


async def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    target, metadata = _target(args)
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            if args.command == "profile":
                return await _profile(channel, metadata, args, out)
            if args.action == "list":
                return await _list(channel, metadata, args, out)
            return await _tail(channel, metadata, args, out)
        except grpc.aio.AioRpcError as error:
            print(f"inlet: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1


async def _profile(
    channel: grpc.aio.Channel,
    metadata: list[tuple[str, str]],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    stub = profiles_pb2_grpc.ProfileServiceStub(channel)
    found = await stub.GetProfile(
        profiles_pb2.GetProfileRequest(id=args.id), metadata=metadata, timeout=30
    )
    out.write(orjson.dumps(profile_json(found), option=orjson.OPT_INDENT_2).decode())
    out.write("\n")
    return 0


def profile_json(found: profiles_pb2.Profile) -> dict[str, Any]:
    """A profile in protobuf's JSON mapping, except that each trait's `value` is the JSON
    the customer sent (`value_json`: `5`, a 19-digit id), not the lossy Value (`5.0`)."""
    shown = json_format.MessageToDict(found)
    groups = shown.get("groups", [])
    for traits in [shown.get("traits", {}), *(group.get("traits", {}) for group in groups)]:
        for trait in traits.values():
            if text := trait.pop("valueJson", None):  # absent from a core older than it
                trait["value"] = orjson.Fragment(text)
    return shown


async def _list(
    channel: grpc.aio.Channel,
    metadata: list[tuple[str, str]],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    stub = events_pb2_grpc.EventServiceStub(channel)
    token, left = args.page_token, args.limit
    while left > 0:
        page = await stub.ListEvents(
            events_pb2.ListEventsRequest(
                user_id=args.user or "",
                types=args.type,
                name=args.name or "",
                since=_timestamp(args.since, "--since"),
                until=_timestamp(args.until, "--until"),
                order=(
                    events_pb2.ORDER_NEWEST_FIRST
                    if args.newest_first
                    else events_pb2.ORDER_OLDEST_FIRST
                ),
                page_size=min(left, 1000),
                page_token=token,
            ),
            metadata=metadata,
            timeout=30,
        )
        out.writelines(event_line(event).decode() for event in page.events)
        left -= len(page.events)
        token = page.next_page_token
        if not token:
            return 0
    print(f"more: --page-token {token}", file=sys.stderr)
    return 0


async def _tail(
    channel: grpc.aio.Channel,
    metadata: list[tuple[str, str]],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    """Follow Subscribe forever; reconnect after core restarts, resuming from the last
    sequence printed (so nothing is skipped; an event may print twice, never zero times)."""
    stub = events_pb2_grpc.EventServiceStub(channel)
    cursor = _start(args)
    failures = 0
    while True:
        request = events_pb2.SubscribeRequest(
            after_sequence=cursor or 0, from_now=cursor is None, types=args.type
        )
        call = stub.Subscribe(request, metadata=metadata)
        try:
            if cursor is None:
                cursor = int(dict(await call.initial_metadata())["inlet-start-sequence"])
            async for event in call:
                out.write(event_line(event).decode())
                out.flush()
                cursor = event.sequence
                failures = 0
                if args.cursor_file:
                    _save(args.cursor_file, cursor)
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
            delay = _BACKOFF[min(failures, len(_BACKOFF) - 1)]
            failures += 1
            log.warning(
                "stream ended (%s); resuming after %s in %.1f s", error.code().name, cursor, delay
            )
            await asyncio.sleep(delay)


def _start(args: argparse.Namespace) -> int | None:
    """The sequence to resume after; None: from now."""
    if args.cursor_file and args.cursor_file.exists():
        return int(args.cursor_file.read_text().strip() or 0)
    if args.after is not None:
        return int(args.after)
    return 0 if args.all else None


def _save(path: Path, cursor: int) -> None:
    # Written then renamed: a crash never leaves a half-written cursor.
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(f"{cursor}\n")
    temporary.replace(path)
