"""EventService: ingest (scope `ingest`), history and the live feed (scope `read`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from inlet.v1 import events_pb2, events_pb2_grpc
from service import cursors
from service.auth import Authenticator, bearer_key
from service.config import CoreConfig
from service.convert import timestamp_micros
from service.errors import InvalidArgument, InvalidEvent
from service.feed import Feed
from service.handoff import batch_response, result_message
from service.ingest import Ingestor
from service.logs import split_request_ids
from service.messages import stored_event
from service.rpc import Context, abort, caller, rpc, stream_rpc
from service.store import Store
from service.store.base import EventQuery
from service.validation import EVENT_TYPES, spec_type

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def event_types(requested: Sequence[str]) -> tuple[str, ...]:
    """Requested type filters in their Spec form; InvalidArgument for an unknown one."""
    types = []
    for name in requested:
        spec = spec_type(name)
        if spec is None:
            raise InvalidArgument(
                f"unknown type {name[:40]!r}: expected {', '.join(EVENT_TYPES)}",
                "invalid_type",
                "types",
            )
        types.append(spec)
    return tuple(types)


def _micros(request: events_pb2.ListEventsRequest, field: str) -> int | None:
    if not request.HasField(field):  # type: ignore[arg-type]  # `since` or `until`
        return None
    try:
        return timestamp_micros(getattr(request, field), field)
    except InvalidEvent as error:
        raise InvalidArgument(error.message, "invalid_time", field) from None


def request_ids_of(metadata: Any) -> tuple[str, ...]:
    """Per-item request ids a batch call from the bridge carries in `x-request-id`."""
    for name, value in metadata or ():
        if name == "x-request-id" and isinstance(value, str):
            return split_request_ids(value)
    return ()


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(
        self, ingestor: Ingestor, config: CoreConfig, store: Store, auth: Authenticator, feed: Feed
    ) -> None:
        self._ingestor = ingestor
        self._config = config
        self._store = store
        self._auth = auth
        self._feed = feed

    @rpc
    async def Ingest(
        self, request: events_pb2.IngestItem, context: Context
    ) -> events_pb2.IngestResult:
        (result,) = await self._ingestor.ingest(
            [request], bearer_key(context.invocation_metadata())
        )
        if result.outcome == events_pb2.OUTCOME_REJECTED:
            await abort(context, result.code, result.message, result.reason)
        return result_message(result)

    @rpc
    async def IngestBatch(
        self, request: events_pb2.IngestBatchRequest, context: Context
    ) -> events_pb2.IngestBatchResponse:
        if len(request.items) > self._config.max_batch_items:
            raise InvalidEvent(
                f"a batch may hold at most {self._config.max_batch_items} items",
                "batch_too_large",
            )
        metadata = context.invocation_metadata()
        results = await self._ingestor.ingest(
            request.items, bearer_key(metadata), request_ids_of(metadata)
        )
        return batch_response(results)

    @rpc
    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: Context
    ) -> events_pb2.ListEventsResponse:
        key = await caller(self._auth, context, "read")
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"`page_size` must be 1-{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})",
                "invalid_page_size",
                "page_size",
            )
        newest_first = request.order == events_pb2.ORDER_NEWEST_FIRST
        query = EventQuery(
            key.account_id,
            ids=(
                await self._store.linked_ids(key.account_id, request.user_id)
                if request.user_id
                else None
            ),
            types=event_types(request.types),
            name=request.name or None,
            since_us=_micros(request, "since"),
            until_us=_micros(request, "until"),
            newest_first=newest_first,
            after=cursors.decode(request.page_token, newest_first) if request.page_token else None,
            limit=size + 1,  # one more than asked: whether another page exists
        )
        records = await self._store.list_events(query)
        page = records[:size]
        more = len(records) > size
        return events_pb2.ListEventsResponse(
            events=[stored_event(r) for r in page],
            next_page_token=cursors.encode(page[-1].seq, newest_first) if more else "",
        )

    @stream_rpc
    async def Subscribe(
        self, request: events_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[events_pb2.StoredEvent]:
        key = await caller(self._auth, context, "read")
        types = event_types(request.types)
        after = await self._store.latest_sequence() if request.from_now else request.after_sequence
        # Tells the caller where the stream starts (its first cursor), and that every
        # event committed from now on will come: a `from_now` caller can act on it.
        await context.send_initial_metadata((("inlet-start-sequence", str(after)),))
        # Counted open until the call is over, however it ends: a client that goes away
        # leaves this generator suspended (finalised only when collected), so its own
        # `finally` cannot be what closes the count.
        self._feed.stream_opened()
        # (grpc-stubs declare the callback type as a class, not a Protocol.)
        context.add_done_callback(lambda _: self._feed.stream_closed())  # type: ignore[arg-type]
        async for record in self._feed.follow(key.account_id, after, types):
            yield stored_event(record)
