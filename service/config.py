"""Configuration of a core process: one frozen dataclass, from flags and INLET_* variables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from service.retention import MIN_RETENTION_S
from service.store import Store, open_store
from service.timestamps import parse_duration_s
from service.validation import EVENT_TYPES

DEFAULT_DATABASE: Final = "inlet-data/inlet.db"
DEFAULT_CORE_LISTEN: Final = "127.0.0.1:50051"


def split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def env_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class CoreConfig:
    """Settings of the gRPC core."""

    listen: str = DEFAULT_CORE_LISTEN
    """host:port of the gRPC server (port 0: pick a free one)."""

    database: str = DEFAULT_DATABASE
    """SQLite file path (or `sqlite:///path`; created with its folder if missing), or a
    `postgresql://user@host:port/db` DSN: many cores then share that database."""

    durable: bool = True
    """fsync every commit (SQLite `synchronous=FULL`, PostgreSQL `synchronous_commit=on`):
    acknowledged events survive a power cut."""

    pg_pool_size: int = 10
    """PostgreSQL: most pooled connections per process (one more is used for LISTEN)."""

    pg_commits_in_flight: int = 4
    """PostgreSQL: ingest transactions one process runs at once (at most pg_pool_size)."""

    pg_idle_transaction_timeout_s: float = 60.0
    """PostgreSQL: the server ends a core's session idle inside a transaction this long
    (a frozen core), so that it does not hold readers back for ever."""

    pg_timeout_s: float = 5.0
    """PostgreSQL: longest wait to connect, for a pooled connection or for a statement;
    past it the call fails with UNAVAILABLE (HTTP 503)."""

    supported_types: tuple[str, ...] = EVENT_TYPES
    """Call types this deployment accepts; others are refused with UNIMPLEMENTED (HTTP 501)."""

    shutdown_grace_s: float = 10.0
    """On SIGTERM: how long in-flight RPCs may take to finish before they are aborted."""

    max_batch_items: int = 10_000
    """Most items one IngestBatch call may carry."""

    max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message received (an IngestBatch of big events)."""

    key_cache_ttl_s: float = 2.0
    """How long a verified API key is trusted before it is read again from the store."""

    rate_limit_per_key: float = 0.0
    """Events per second each API key may send (bursts up to one second's worth);
    beyond it: RESOURCE_EXHAUSTED / HTTP 429 + Retry-After. 0: no limit."""

    max_inflight_events: int = 50_000
    """Events being validated and committed at once; beyond it calls are refused with
    UNAVAILABLE / HTTP 503 at once, so memory stays bounded under overload."""

    feed_poll_s: float | None = None
    """Subscribe streams that are caught up re-read the store at least this often. Commits
    by this core wake them at once; on PostgreSQL other cores' commits do too (NOTIFY), so
    None takes the store's choice: 1 s for SQLite, 30 s for PostgreSQL."""

    switch_refresh_s: float = 2.0
    """How often the maintenance switch is re-read from the database (other cores, the CLI)."""
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    """PEM certificate and key: the gRPC port serves TLS only."""

    grpc_client_ca: str | None = None
    """PEM CA bundle: callers must present a client certificate it signed (mTLS)."""

    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (on the gRPC listen host); for `serve core`,
    which has no HTTP port of its own. 0 picks a free port."""

    metrics_token: str | None = None
    """When set, the metrics port answers only `Authorization: Bearer <token>`."""

    log_traits: bool = False
    """Put trait values in the per-event log lines. Customer data: off by default."""

    retention_s: float | None = None
    """Delete events received longer ago than this (at least a day); None: keep them all
    (service/retention.py)."""

    prune_interval_s: float = 60.0
    """How often a core with a retention deletes what has aged out."""

    reuse_port: bool = False
    """Share the gRPC port with the sibling workers of `inlet serve --workers`
    (SO_REUSEPORT: the kernel spreads connections over them). Off, a second core on a
    taken port fails to start instead of splitting traffic with the first."""

    sibling_writers: bool = False
    """Sibling workers write the same SQLite file: each write transaction first takes a
    file lock, which wakes the next writer as soon as it is free (WriterLock,
    service/store/sqlite/database.py)."""

    def __post_init__(self) -> None:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("gRPC TLS needs both --grpc-tls-cert and --grpc-tls-key")
        if self.grpc_client_ca is not None and self.grpc_tls_cert is None:
            raise ValueError("--grpc-client-ca needs --grpc-tls-cert/--grpc-tls-key")
        unknown = set(self.supported_types) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {sorted(unknown)}: expected {EVENT_TYPES}")
        if self.max_batch_items < 1 or self.shutdown_grace_s < 0 or self.key_cache_ttl_s < 0:
            raise ValueError("max_batch_items must be >= 1, grace and ttl >= 0")
        if (self.feed_poll_s is not None and self.feed_poll_s <= 0) or self.switch_refresh_s <= 0:
            raise ValueError("feed_poll_s and switch_refresh_s must be > 0")
        if (
            self.pg_pool_size < 1
            or self.pg_commits_in_flight < 1
            or min(self.pg_timeout_s, self.pg_idle_transaction_timeout_s) <= 0
        ):
            raise ValueError(
                "pg_pool_size and pg_commits_in_flight must be >= 1, the PostgreSQL timeouts > 0"
            )
        if self.rate_limit_per_key < 0 or self.max_inflight_events < 1:
            raise ValueError("rate_limit_per_key must be >= 0, max_inflight_events >= 1")
        if self.retention_s is not None and self.retention_s < MIN_RETENTION_S:
            raise ValueError("--retention must be at least 1d (Segment retries for 4 hours)")
        if self.prune_interval_s <= 0:
            raise ValueError("prune_interval_s must be > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> CoreConfig:
        """Read INLET_* variables; `overrides` (from flags, None = unset) win."""
        readers: dict[str, tuple[str, Callable[[str], object]]] = {
            "INLET_CORE_LISTEN": ("listen", str),
            "INLET_DATABASE_URL": ("database", str),
            "INLET_DURABLE": ("durable", env_bool),
            "INLET_SUPPORTED_TYPES": ("supported_types", split_list),
            "INLET_SHUTDOWN_GRACE_S": ("shutdown_grace_s", float),
            "INLET_RATE_LIMIT_PER_KEY": ("rate_limit_per_key", float),
            "INLET_FEED_POLL_S": ("feed_poll_s", float),
            "INLET_SWITCH_REFRESH_S": ("switch_refresh_s", float),
            "INLET_PG_POOL_SIZE": ("pg_pool_size", int),
            "INLET_PG_COMMITS_IN_FLIGHT": ("pg_commits_in_flight", int),
            "INLET_PG_IDLE_TRANSACTION_TIMEOUT_S": ("pg_idle_transaction_timeout_s", float),
            "INLET_PG_TIMEOUT_S": ("pg_timeout_s", float),
            "INLET_GRPC_TLS_CERT": ("grpc_tls_cert", str),
            "INLET_GRPC_TLS_KEY": ("grpc_tls_key", str),
            "INLET_GRPC_CLIENT_CA": ("grpc_client_ca", str),
            "INLET_METRICS_PORT": ("metrics_port", int),
            "INLET_METRICS_TOKEN": ("metrics_token", str),
            "INLET_LOG_TRAITS": ("log_traits", env_bool),
            "INLET_RETENTION": ("retention_s", parse_duration_s),
            "INLET_PRUNE_INTERVAL_S": ("prune_interval_s", float),
        }
        values = {
            name: read(environ[variable])
            for variable, (name, read) in readers.items()
            if variable in environ
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def open_configured_store(config: CoreConfig) -> Store:
    """The store `config` names, with its settings (unopened)."""
    return open_store(
        config.database,
        durable=config.durable,
        pool_size=config.pg_pool_size,
        commits_in_flight=config.pg_commits_in_flight,
        idle_transaction_timeout_s=config.pg_idle_transaction_timeout_s,
        timeout_s=config.pg_timeout_s,
        sibling_writers=config.sibling_writers,
    )
