"""The core's Prometheus metrics.

Label values come only from Inlet's own vocabulary: event types, outcomes, the
stable rejection reasons, gRPC method names of registered services and status
codes. Never an API key, account, user id or any other field of an event.

Counting happens per event on the ingest path, so each labelled child is bound
once and kept in a small dict (bounded by types x reasons).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.store.checkpointer import WalCheckpointer

# Seconds: an fsync'd group commit takes 0.1-10 ms here; a locked database up to the
# busy timeout (2 s).
STORE_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
RPC_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

UNKNOWN_TYPE: Final = "unknown"
"""The type label of events rejected before their type was known (bad key, bad JSON)."""


class CoreMetrics:
    """One per core, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._events = Counter(
            "inlet_events",
            "Events judged by the core, by type and outcome (stored, duplicate, suppressed: "
            "of a deleted user, rejected) and, for rejected events, the stable reason code.",
            ["type", "outcome", "reason"],
            registry=registry,
        )
        self._stored: dict[str, Counter] = {}
        self._duplicate: dict[str, Counter] = {}
        self._suppressed: dict[str, Counter] = {}
        self._rejected: dict[tuple[str, str], Counter] = {}
        self.store_write = Histogram(
            "inlet_store_write_duration_seconds",
            "Time for the store to commit one ingest call's events (including the wait "
            "to join a group commit).",
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.store_write_failures = Counter(
            "inlet_store_write_failures",
            "Ingest commits that failed (store locked, full or unreachable): their events "
            'were refused for retry (inlet_events_total{reason="store_unavailable"}).',
            registry=registry,
        )
        self.inflight_events = Gauge(
            "inlet_core_events_in_flight",
            "Events being validated and committed now.",
            registry=registry,
        )
        self._rpcs = Counter(
            "inlet_grpc_requests",
            "gRPC calls handled by the core, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self._rpc_latency = Histogram(
            "inlet_grpc_request_duration_seconds",
            "Time the core took for a gRPC call, by method.",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.events_pruned = Counter(
            "inlet_events_pruned",
            "Events deleted because they were received longer ago than the retention "
            "(INLET_RETENTION).",
            registry=registry,
        )
        self.subscribe_streams = Gauge(
            "inlet_subscribe_streams",
            "Subscribe streams open now.",
            registry=registry,
        )
        self.subscribe_delay = Histogram(
            "inlet_subscribe_delivery_delay_seconds",
            "Time from an event's receipt to its delivery on a Subscribe stream: how far "
            "subscribers lag (a stream catching up from an old cursor shows as large delays).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )

    def stored(self, event_type: str) -> Counter:
        child = self._stored.get(event_type)
        if child is None:
            child = self._stored[event_type] = self._events.labels(event_type, "stored", "")
        return child

    def duplicate(self, event_type: str) -> Counter:
        child = self._duplicate.get(event_type)
        if child is None:
            child = self._duplicate[event_type] = self._events.labels(event_type, "duplicate", "")
        return child

    def suppressed(self, event_type: str) -> Counter:
        child = self._suppressed.get(event_type)
        if child is None:
            child = self._suppressed[event_type] = self._events.labels(event_type, "suppressed", "")
        return child

    def rejected(self, event_type: str, reason: str) -> Counter:
        key = (event_type, reason)
        child = self._rejected.get(key)
        if child is None:
            child = self._rejected[key] = self._events.labels(event_type, "rejected", reason)
        return child

    def watch_checkpoints(self, checkpointer: WalCheckpointer) -> None:
        """Export a SQLite store's checkpoint thread (read when scraped)."""
        self.registry.register(CheckpointCollector(checkpointer))

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """Per call, not per event: labelling on the fly is cheap enough here."""
        self._rpcs.labels(method, code).inc()
        self._rpc_latency.labels(method).observe(seconds)


class CheckpointCollector(Collector):
    """What SQLite's checkpoints have done (service/store/checkpointer.py): a log that
    keeps growing means they fall behind or a long read pins it."""

    def __init__(self, checkpointer: WalCheckpointer) -> None:
        self._checkpointer = checkpointer

    def collect(self) -> Iterator[Metric]:
        c = self._checkpointer
        yield CounterMetricFamily(
            "inlet_sqlite_checkpoints",
            "Checkpoints of the SQLite write-ahead log run by the checkpoint thread.",
            value=c.runs,
        )
        yield CounterMetricFamily(
            "inlet_sqlite_checkpoint_catch_ups",
            "Short checkpoints run by the writer after a commit, so that the log restarts.",
            value=c.catch_ups,
        )
        yield CounterMetricFamily(
            "inlet_sqlite_checkpoint_failures",
            "Checkpoints of the thread that failed (retried after the next commit; "
            "nothing is lost).",
            value=c.failures,
        )
        yield GaugeMetricFamily(
            "inlet_sqlite_checkpoint_thread_up",
            "1 while the checkpoint thread runs.",
            value=1 if c.alive else 0,
        )
        last = c.last
        yield GaugeMetricFamily(
            "inlet_sqlite_wal_pages",
            "Pages in the write-ahead log at the latest checkpoint (it restarts from "
            "zero once all are copied and no reader needs them).",
            value=max(last.log_pages, 0) if last is not None else 0,
        )
