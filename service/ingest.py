"""The ingest pipeline: authenticate, validate, deduplicate and commit a batch of items.

Used by both EventService RPCs. Each item is judged on its own (a bad item never
sinks the good ones), and all accepted items of a call are committed in one
store transaction before any caller hears OK.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from inlet.v1 import events_pb2
from service.auth import Authenticator
from service.convert import event_to_spec, timestamp_micros
from service.errors import InletError, Overloaded, RateLimited, StoreUnavailable, Unavailable
from service.handoff import Submission, Verdict
from service.logs import REQUEST_ID, RateLimitedLog
from service.maintenance import MaintenanceMode
from service.metrics import UNKNOWN_TYPE, CoreMetrics
from service.ratelimit import RateLimiter
from service.store import EventStore, EventWrite, KeyRecord
from service.store.base import SUPPRESSED
from service.suppression import REASON as SUPPRESSED_REASON
from service.validation import EVENT_TYPES, CanonicalEvent, canonicalise

log = logging.getLogger(__name__)
event_log = logging.getLogger("inlet.events")
_OUTCOMES = {0: "unspecified", 1: "stored", 2: "duplicate", 3: "rejected", 4: "suppressed"}

_STORED = events_pb2.OUTCOME_STORED
_DUPLICATE = events_pb2.OUTCOME_DUPLICATE
_REJECTED = events_pb2.OUTCOME_REJECTED
_SUPPRESSED = events_pb2.OUTCOME_SUPPRESSED
#: IngestResult.message of a suppressed event (the webhook's 200 body says it too).
SUPPRESSED_MESSAGE = "not stored: the user was deleted"
#: The code of refusals for Inlet's own trouble (store, overload, maintenance): retried.
_RETRY_LATER = Unavailable.grpc_code.value[0]


def rejected(error: InletError, account: str = "") -> Verdict:
    return Verdict(
        _REJECTED, error.grpc_code.value[0], error.reason, error.message, account=account
    )


class Ingestor:
    """Turns IngestItems (gRPC) or Submissions (the bridge in the same process) into
    Verdicts. One per core process."""

    def __init__(
        self,
        store: EventStore,
        auth: Authenticator,
        supported_types: Collection[str] = EVENT_TYPES,
        limiter: RateLimiter | None = None,
        max_inflight_events: int = 50_000,
        maintenance: MaintenanceMode | None = None,
        metrics: CoreMetrics | None = None,
        log_traits: bool = False,
    ) -> None:
        """`log_traits`: put trait values in the per-event log line (customer data,
        so off by default)."""
        self._store = store
        self._auth = auth
        self._supported_types = frozenset(supported_types)
        self._limiter = limiter
        self._max_inflight = max_inflight_events
        self._inflight = 0
        self._maintenance = maintenance
        self._metrics = metrics or CoreMetrics(CollectorRegistry())
        self._metrics.inflight_events.set_function(lambda: self._inflight)
        self._log_traits = log_traits
        # A full disk fails every commit: a warning each time would bury everything else.
        self._warnings = RateLimitedLog(log)

    @property
    def inflight(self) -> int:
        """Events being validated and committed right now."""
        return self._inflight

    async def ingest(
        self,
        items: Sequence[events_pb2.IngestItem | Submission],
        call_key: str | None = None,
        request_ids: Sequence[str] = (),
    ) -> list[Verdict]:
        """Process `items`; `call_key` is the key from call metadata (for items without one);
        `request_ids`, when one per item, name each item's request in the logs.

        Past `max_inflight_events` events being processed at once, a call is refused
        whole with UNAVAILABLE at once (HTTP 503): memory stays bounded and callers
        retry, instead of every event waiting longer and longer.
        """
        if len(request_ids) != len(items):
            request_ids = ()
        # Each item's lines carry its own request id; the call's id is restored after.
        token = REQUEST_ID.set(REQUEST_ID.get())
        try:
            if self._maintenance is not None and self._maintenance.on:
                results = [rejected(self._maintenance.error()) for _ in items]
                self._account(results, {}, {}, request_ids)
                return results
            # An idle core takes any call, however large: refusing one that can never
            # fit would make its caller retry forever.
            if self._inflight and self._inflight + len(items) > self._max_inflight:
                error = Overloaded("the core is overloaded, retry later", "overloaded")
                self._warnings.warning(
                    "overloaded",
                    f"the core is overloaded ({self._inflight} events in flight): "
                    f"{len(items)} events refused for retry",
                    len(items),
                )
                results = [rejected(error) for _ in items]
                self._account(results, {}, {}, request_ids)
                return results
            self._inflight += len(items)
            try:
                return await self._ingest(items, call_key, request_ids)
            finally:
                self._inflight -= len(items)
        finally:
            REQUEST_ID.reset(token)

    def _limit(self, key_id: str, count: int) -> RateLimited | None:
        assert self._limiter is not None
        wait = self._limiter.admit(key_id, count)
        if wait is None:
            return None
        return RateLimited(
            f"this key's rate limit ({self._limiter.rate:g} events/s) is exceeded; "
            f"retry in {wait:.1f} s",
            "rate_limited",
        )

    async def _ingest(
        self,
        items: Sequence[events_pb2.IngestItem | Submission],
        call_key: str | None,
        request_ids: Sequence[str],
    ) -> list[Verdict]:
        now_us = time.time_ns() // 1000
        results: list[Verdict | None] = [None] * len(items)
        writes: list[EventWrite] = []
        positions: list[int] = []
        accounts: list[str] = []  # per write: its account's name, for the results
        keys: dict[str, KeyRecord | InletError] = {}  # one look-up per distinct key per call
        # The rate limit admits or refuses all of a key's items in a call together.
        limited: dict[str, RateLimited | None] = {}
        per_key = Counter(item.api_key or call_key or "" for item in items) if self._limiter else {}
        senders: dict[int, KeyRecord] = {}  # position -> its valid key, for the log

        for position, item in enumerate(items):
            if request_ids:
                REQUEST_ID.set(request_ids[position])  # auth's log lines name the request
            api_key = item.api_key or call_key or ""
            record = keys.get(api_key)
            if record is None:
                try:
                    record = await self._auth.authenticate(api_key, "ingest")
                except InletError as error:
                    record = error
                keys[api_key] = record
            if isinstance(record, InletError):
                results[position] = rejected(record)
                continue
            senders[position] = record
            if self._limiter is not None:
                if api_key not in limited:
                    limited[api_key] = self._limit(record.key_id, per_key[api_key])
                if (refusal := limited[api_key]) is not None:
                    results[position] = rejected(refusal, record.account_name)
                    continue
            try:
                if isinstance(item, Submission):  # the bridge in this process
                    raw, received_at_us = item.json, item.received_at_us or now_us
                else:
                    raw = _raw_json(item)
                    received_at_us = (
                        timestamp_micros(item.received_at, "received_at")
                        if item.HasField("received_at")
                        else now_us
                    )
                event = canonicalise(
                    raw,
                    received_at_us=received_at_us,
                    settings=item.settings_json,
                    supported_types=self._supported_types,
                )
            except InletError as error:
                results[position] = rejected(error, record.account_name)
                continue
            writes.append(
                EventWrite(
                    record.account_id,
                    record.key_id,
                    event,
                    record.account_suppresses_deleted_users,
                )
            )
            positions.append(position)
            accounts.append(record.account_name)

        if writes:
            started = time.perf_counter()
            try:
                sequences = await self._store.write_events(writes)
            except StoreUnavailable as error:
                self._metrics.store_write_failures.inc()
                cause = f" ({error.__cause__})" if error.__cause__ is not None else ""
                self._warnings.warning(
                    "store_unavailable",
                    f"store unavailable{cause}: {len(writes)} events refused for retry",
                    len(writes),
                )
                for position, account in zip(positions, accounts, strict=True):
                    results[position] = rejected(error, account)
            else:
                self._metrics.store_write.observe(time.perf_counter() - started)
                for position, write, sequence, account in zip(
                    positions, writes, sequences, accounts, strict=True
                ):
                    if sequence is SUPPRESSED:
                        results[position] = Verdict(
                            _SUPPRESSED,
                            reason=SUPPRESSED_REASON,
                            message=SUPPRESSED_MESSAGE,
                            message_id=write.event.message_id,
                            account=account,
                        )
                        continue
                    results[position] = Verdict(
                        _STORED if sequence is not None else _DUPLICATE,
                        message_id=write.event.message_id,
                        sequence=sequence or 0,
                        account=account,
                    )
        done = [result for result in results if result is not None]
        assert len(done) == len(items), "every item must have a result"
        accepted = {position: write for position, write in zip(positions, writes, strict=True)}
        self._account(done, accepted, senders, request_ids)
        return done

    def _account(
        self,
        results: Sequence[Verdict],
        accepted: dict[int, EventWrite],
        senders: dict[int, KeyRecord],
        request_ids: Sequence[str],
    ) -> None:
        """Count each event, and log it: the request id, messageId, account and key id,
        type, outcome. Never the key, never event contents (trait values only with
        `log_traits`).

        Rejections and suppressed events are logged at INFO (whose events, why); stored
        and duplicate events at DEBUG: the bridge's INFO line already names each request's
        messageId, account, status and duration, and a second line per event costs ~12 µs of CPU, close to
        what validating and storing the event costs (bench/). Refusals for Inlet's own
        trouble (store unavailable, overload, maintenance) say nothing about the event:
        DEBUG too, summed up by a warning at most once a minute (a full disk would
        otherwise log a line per event for as long as it lasts).
        """
        metrics = self._metrics
        log_info = event_log.isEnabledFor(logging.INFO)
        log_debug = event_log.isEnabledFor(logging.DEBUG)
        # Counted per call, then added: one counter update per series, not per event.
        stored: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        for position, result in enumerate(results):
            write = accepted.get(position)
            event_type = write.event.type if write is not None else UNKNOWN_TYPE
            outcome = result.outcome
            if outcome == _STORED:
                stored[event_type] += 1
                if not log_debug:
                    continue
            elif outcome == _DUPLICATE:
                duplicates[event_type] += 1
                if not log_debug:
                    continue
            elif outcome == _SUPPRESSED:
                metrics.suppressed(event_type).inc()
                if not log_info:
                    continue
            else:
                metrics.rejected(event_type, result.reason).inc()
                if not (log_debug if result.code == _RETRY_LATER else log_info):
                    continue
            if request_ids:
                REQUEST_ID.set(request_ids[position])
            fields: dict[str, Any] = {"outcome": _OUTCOMES.get(outcome, "unspecified")}
            sender = senders.get(position)
            if sender is not None:
                fields["account_id"] = sender.account_id
                fields["key_id"] = sender.key_id
            if write is not None:
                fields["messageId"] = write.event.message_id
                fields["type"] = event_type
                if self._log_traits:
                    fields["traits"] = _traits(write.event)
            if outcome in (_REJECTED, _SUPPRESSED):
                fields["reason"] = result.reason
                level = logging.DEBUG if result.code == _RETRY_LATER else logging.INFO
                event_log.log(level, "event %s", fields["outcome"], extra={"fields": fields})
            else:
                event_log.debug("event %s", fields["outcome"], extra={"fields": fields})
        for event_type, count in stored.items():
            metrics.stored(event_type).inc(count)
        for event_type, count in duplicates.items():
            metrics.duplicate(event_type).inc(count)


def _traits(event: CanonicalEvent) -> Any:
    for key, value in event.body.items():
        if key.lower() == "traits":
            return value
    return None


def _raw_json(item: events_pb2.IngestItem) -> bytes:
    if item.WhichOneof("payload") == "event":
        return orjson.dumps(event_to_spec(item.event))
    return item.json
