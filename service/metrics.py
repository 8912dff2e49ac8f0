"""The core's Prometheus metrics.

Label values come only from Inlet's own vocabulary: event types, outcomes, the
stable rejection reasons, gRPC method names of registered services and status
codes. Never an API key, account, user id or any other field of an event.

Counting happens per event on the ingest path, so each labelled child is bound
once and kept in a small dict (bounded by types x reasons).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, values
from prometheus_client.metrics import Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.store.eraser_task import EraserTask
    from service.store.postgres.eraser import Eraser as PostgresEraser
    from service.store.sqlite.checkpointer import WalCheckpointer

# Seconds: an fsync'd group commit takes 0.1-10 ms here; a locked database up to the
# busy timeout (2 s).
STORE_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
RPC_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: prometheus_client's multiprocess mode (the workers of `inlet serve --workers`, whose
#: supervisor sets PROMETHEUS_MULTIPROC_DIR): every value is kept in a file of its
#: process, and /metrics adds up the files of all workers, those of workers that died
#: included, so counters never go back. Decided by prometheus_client when imported.
MULTIPROCESS: Final = bool(getattr(values.ValueClass, "_multiprocess", False))


def exposition(registry: CollectorRegistry) -> CollectorRegistry:
    """What /metrics shows: `registry`; in multiprocess mode the totals of every worker
    (MultiProcessCollector over the folder), after this worker's samples are fresh."""
    if not MULTIPROCESS:
        return registry
    SAMPLER.sample()
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return merged


class Sampler:
    """Values that live in a process's memory and are read when scraped (a count kept
    as a plain integer on the hot path, the checkpoint thread's tallies): in
    multiprocess mode /metrics reads files, so each worker copies them into its file
    every `interval_s` (1 s) and when it answers a scrape itself."""

    def __init__(self) -> None:
        self._samples: list[Callable[[], None]] = []

    def add(self, sample: Callable[[], None]) -> None:
        self._samples.append(sample)

    def gauge(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """`gauge` shows `read()`: at each scrape, or sampled in multiprocess mode."""
        if MULTIPROCESS:
            self.add(lambda: gauge.set(read()))
        else:
            gauge.set_function(read)

    def sample(self) -> None:
        for sample in self._samples:
            sample()

    async def follow(self, interval_s: float = 1.0) -> None:
        """Sample forever (a task; cancel it to stop)."""
        while True:
            self.sample()
            await asyncio.sleep(interval_s)


SAMPLER: Final = Sampler()


def count_worker(registry: CollectorRegistry, replaces: bool) -> None:
    """A worker of `inlet serve --workers` counts itself: live workers, and those
    started to replace one that died (their sum over all workers' files)."""
    Gauge(
        "inlet_workers",
        "Worker processes of `inlet serve --workers` serving now.",
        registry=registry,
        multiprocess_mode="livesum",
    ).set(1)
    restarts = Counter(
        "inlet_worker_restarts",
        "Workers of `inlet serve --workers` started to replace one that died.",
        registry=registry,
    )
    if replaces:
        restarts.inc()


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
            multiprocess_mode="livesum",
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
            multiprocess_mode="livesum",
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
        """Export a SQLite store's checkpoint thread (read when scraped, or sampled)."""
        self._watch(CheckpointCollector(checkpointer))

    def watch_sqlite_eraser(self, eraser: EraserTask) -> None:
        """Export a SQLite store's background eraser (read when scraped, or sampled)."""
        self._watch(EraserCollector(eraser, "sqlite"))

    def watch_eraser(self, eraser: PostgresEraser) -> None:
        """Export a PostgreSQL store's background eraser (read when scraped, or sampled)."""
        self._watch(PostgresEraserCollector(eraser))

    def _watch(self, collector: Collector) -> None:
        if MULTIPROCESS:
            sample_collector(collector, self.registry)
        else:
            self.registry.register(collector)

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """Per call, not per event: labelling on the fly is cheap enough here."""
        self._rpcs.labels(method, code).inc()
        self._rpc_latency.labels(method).observe(seconds)


class CheckpointCollector(Collector):
    """What SQLite's checkpoints have done (service/store/sqlite/checkpointer.py): a log that
    keeps growing means they fall behind or a long read pins it."""

    def __init__(self, checkpointer: WalCheckpointer) -> None:
        self._checkpointer = checkpointer

    def collect(self) -> Iterator[Metric]:
        checkpointer = self._checkpointer
        yield CounterMetricFamily(
            "inlet_sqlite_checkpoints",
            "Checkpoints of the SQLite write-ahead log run by the checkpoint thread.",
            value=checkpointer.runs,
        )
        yield CounterMetricFamily(
            "inlet_sqlite_checkpoint_catch_ups",
            "Short checkpoints run by the writer after a commit, so that the log restarts.",
            value=checkpointer.catch_ups,
        )
        yield CounterMetricFamily(
            "inlet_sqlite_checkpoint_failures",
            "Checkpoints of the thread that failed (retried after the next commit; "
            "nothing is lost).",
            value=checkpointer.failures,
        )
        yield GaugeMetricFamily(
            "inlet_sqlite_checkpoint_thread_up",
            "1 while the checkpoint thread runs.",
            value=1 if checkpointer.alive else 0,
        )
        last = checkpointer.last
        yield GaugeMetricFamily(
            "inlet_sqlite_wal_pages",
            "Pages in the write-ahead log at the latest checkpoint (it restarts from "
            "zero once all are copied and no reader needs them).",
            value=max(last.log_pages, 0) if last is not None else 0,
        )


class EraserCollector(Collector):
    """What a store's background eraser has done (service/store/*/eraser.py): a deleted
    user's data stays in the database until it has run, so failures want an operator's
    look. `store` names the series: inlet_sqlite_..., inlet_pg_..."""

    def __init__(self, eraser: EraserTask, store: str) -> None:
        self._eraser = eraser
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"inlet_{self._store}_deletions_erased",
            "Deletions this process erased (each is erased once, by one process).",
            value=self._eraser.erased,
        )
        yield CounterMetricFamily(
            f"inlet_{self._store}_erasure_failures",
            "Erasures that failed (tried again at the next delete or look; meanwhile "
            "reads leave the deleted users' data out).",
            value=self._eraser.failures,
        )


class PostgresEraserCollector(EraserCollector):
    """PostgreSQL's eraser also gives way to ingest, and counts what waits: a count of
    waiting deletions that keeps growing wants a look too."""

    def __init__(self, eraser: PostgresEraser) -> None:
        super().__init__(eraser, "pg")
        self._pg = eraser

    def collect(self) -> Iterator[Metric]:
        yield from super().collect()
        yield CounterMetricFamily(
            "inlet_pg_erasures_given_way",
            "Times the eraser gave way to an ingest transaction holding a deleted user's "
            "rows (it tries again shortly).",
            value=self._pg.gave_way,
        )
        yield GaugeMetricFamily(
            "inlet_pg_deletions_waiting",
            "Deletions recorded and not yet erased, at this process's latest look.",
            value=self._pg.waiting,
        )


#: How the values of a process's collector add up over the workers (multiprocess mode).
_GAUGE_MODES: Final = {
    "inlet_sqlite_checkpoint_thread_up": "livemin",  # 1 while every worker's thread runs
    "inlet_sqlite_wal_pages": "livemax",  # one log for all: the latest length any saw
    "inlet_pg_deletions_waiting": "livemax",  # one table for all: the latest count any saw
}


def sample_collector(collector: Collector, registry: CollectorRegistry) -> None:
    """Copy an unlabelled collector's values into metrics of the multiprocess files
    (SAMPLER): counters grow by what the collector's grew by, gauges take its value."""
    counters: dict[str, tuple[Counter, list[float]]] = {}
    gauges: dict[str, Gauge] = {}
    for family in collector.collect():
        if family.type == "counter":
            counter = Counter(family.name, family.documentation, registry=registry)
            counters[family.name] = (counter, [0.0])
        else:
            gauges[family.name] = Gauge(
                family.name,
                family.documentation,
                registry=registry,
                multiprocess_mode=_GAUGE_MODES.get(family.name, "livesum"),  # type: ignore[arg-type]
            )

    def sample() -> None:
        for family in collector.collect():
            value = family.samples[0].value
            if family.name in counters:
                counter, last = counters[family.name]
                counter.inc(max(value - last[0], 0.0))
                last[0] = value
            elif family.name in gauges:
                gauges[family.name].set(value)

    SAMPLER.add(sample)
