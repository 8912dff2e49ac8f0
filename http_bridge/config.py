"""Configuration of a bridge process: one frozen dataclass, from flags and INLET_* variables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from http_bridge.forwarded import parse_networks

DEFAULT_HOST: Final = "0.0.0.0"
DEFAULT_PORT: Final = 8080


@dataclass(frozen=True)
class BridgeConfig:
    """Settings of the HTTP bridge."""

    core_target: str = "127.0.0.1:50051"
    """host:port of the gRPC core."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    """Where to serve HTTP(S); port 0 picks a free port."""

    tls_cert: str | None = None
    tls_key: str | None = None
    """PEM files; with both set the bridge serves HTTPS (Segment delivers only over HTTPS)."""

    trusted_proxies: tuple[str, ...] = ()
    """Addresses or CIDR ranges of the proxies in front (TLS terminators, load
    balancers) whose `X-Forwarded-For`/`-Proto` are believed, for the logged client."""

    core_tls_ca: str | None = None
    """PEM CA bundle: connect to the core over TLS, trusting these CAs."""

    core_tls_cert: str | None = None
    core_tls_key: str | None = None
    """PEM client certificate and key, for a core that requires them (mTLS)."""

    max_body_bytes: int = 512 * 1024
    """Largest request body, enforced while reading (413). Segment caps events at 32 KB."""

    core_timeout_s: float = 3.0
    """Deadline of each gRPC call to the core. Segment gives a destination 5 s."""

    request_timeout_s: float = 4.0
    """Longest a request waits for its result (queue + call) before answering 503."""

    max_batch_items: int = 500
    max_batch_bytes: int = 8 * 1024 * 1024
    """Caps on one IngestBatch call; the batch is otherwise whatever queued meanwhile."""

    max_inflight_batches: int = 1
    """IngestBatch calls in flight at once. One keeps batches large under load (docs/design.md)."""

    max_gather_delay_s: float = 0.010
    """Longest the call after a returned one waits for that call's senders to come back
    (at most as long as that call took; 0: never): see batcher.py."""

    max_pending: int = 10_000
    max_pending_bytes: int = 64 * 1024 * 1024
    """Requests (and their bytes) queued for the core beyond which new ones get 503 at
    once: memory stays bounded whatever the load."""

    max_queue_delay_s: float = 2.0
    """Once the oldest request queued for the core has waited this long, new ones get 503
    `overloaded` at once: above capacity, latency stays near this instead of growing to
    the request timeout (see batcher.py). Longer than SQLite's 2 s busy timeout, so a
    store waiting out another process's lock does not turn into 503s by itself."""

    body_timeout_s: float = 10.0
    """Longest a client may take to send its body (slow-loris defence): then 408."""

    header_timeout_s: float = 30.0
    """A connection that has not completed a request's headers this long after it opened
    (or after its previous response) is closed: slow-loris and idle keep-alive alike."""

    metrics_token: str | None = None
    """When set, GET /metrics answers only `Authorization: Bearer <token>` (401 otherwise):
    for a bridge whose port is reachable from the internet (it has to be, for Segment)."""

    access_log: str = "all"
    """Which requests get an INFO access line: `all`, or `errors` (answers of 400 and
    up; the others at DEBUG). A line costs ~8 % of a webhook request's CPU (bench/
    instructions.py) and ~300 bytes: at thousands of events a second, `errors` keeps
    what an operator acts on; metrics count the rest and the debugger shows them."""

    debugger_size: int = 500
    """Recent ingest requests kept in memory for GET /debugger (bodies cut at 16 KiB);
    0 turns recording off."""

    retry_after_s: int = 5
    """Retry-After sent with 503 and 429."""

    shutdown_grace_s: float = 10.0
    """On SIGTERM: how long in-flight requests (their bodies included) may take to finish
    before they are cut off (drain.py)."""

    # Segment's Tracking API limits (segment-docs http-api, tracking-api-limit.md), which
    # the SDKs already respect on their side (analytics-python: 32 << 10 per message,
    # batches closed at 475,000 bytes; analytics-node: 32 KB and 480 KB).
    sdk_max_event_bytes: int = 32 * 1024
    """Largest event on the SDK routes (`/v1/*`), as re-encoded after merging batch
    `context`/`integrations`; a larger one is rejected alone (413 `event_too_large`)."""

    sdk_max_batch_bytes: int = 500 * 1024
    """Largest SDK request body, counted *after* gzip decompression (413 past it)."""

    sdk_max_batch_events: int = 2_500
    """Most events in one `/v1/batch` or `/v1/import` request (400 past it)."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        limits = (
            self.max_body_bytes,
            self.max_batch_items,
            self.max_inflight_batches,
            self.sdk_max_event_bytes,
            self.sdk_max_batch_bytes,
            self.sdk_max_batch_events,
        )
        if min(limits) < 1:
            raise ValueError("limits must be positive")
        if self.access_log not in ("all", "errors"):
            raise ValueError("access_log must be `all` or `errors`")
        if self.debugger_size < 0:
            raise ValueError("debugger_size must be >= 0 (0: off)")
        if (self.core_tls_cert is None) != (self.core_tls_key is None):
            raise ValueError("a client certificate for the core needs both its files")
        if self.core_tls_cert is not None and self.core_tls_ca is None:
            raise ValueError("--core-tls-cert needs --core-tls-ca (the core's CA)")
        parse_networks(self.trusted_proxies)  # ValueError names a bad range
        if self.shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must be >= 0")
        if self.request_timeout_s <= 0 or self.core_timeout_s <= 0 or self.max_queue_delay_s <= 0:
            raise ValueError("timeouts must be positive")
        if not 0 <= self.max_gather_delay_s < self.request_timeout_s:
            raise ValueError(
                "max_gather_delay_s must be >= 0 (0: off) and below the request timeout"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> BridgeConfig:
        """Read INLET_* variables; `overrides` (from flags, None = unset) win."""
        values: dict[str, object] = {}
        readers: dict[str, tuple[str, Callable[[str], object]]] = {
            "INLET_CORE": ("core_target", str),
            "INLET_HOST": ("host", str),
            "INLET_PORT": ("port", int),
            "INLET_TLS_CERT": ("tls_cert", str),
            "INLET_TLS_KEY": ("tls_key", str),
            "INLET_TRUSTED_PROXIES": ("trusted_proxies", _split),
            "INLET_CORE_TLS_CA": ("core_tls_ca", str),
            "INLET_CORE_TLS_CERT": ("core_tls_cert", str),
            "INLET_CORE_TLS_KEY": ("core_tls_key", str),
            "INLET_MAX_BODY_BYTES": ("max_body_bytes", int),
            "INLET_CORE_TIMEOUT_S": ("core_timeout_s", float),
            "INLET_REQUEST_TIMEOUT_S": ("request_timeout_s", float),
            "INLET_MAX_PENDING": ("max_pending", int),
            "INLET_BODY_TIMEOUT_S": ("body_timeout_s", float),
            "INLET_MAX_QUEUE_DELAY_S": ("max_queue_delay_s", float),
            "INLET_HEADER_TIMEOUT_S": ("header_timeout_s", float),
            "INLET_SHUTDOWN_GRACE_S": ("shutdown_grace_s", float),
            "INLET_MAX_INFLIGHT_BATCHES": ("max_inflight_batches", int),
            "INLET_MAX_GATHER_DELAY_S": ("max_gather_delay_s", float),
            "INLET_MAX_BATCH_ITEMS": ("max_batch_items", int),
            "INLET_SDK_MAX_EVENT_BYTES": ("sdk_max_event_bytes", int),
            "INLET_SDK_MAX_BATCH_BYTES": ("sdk_max_batch_bytes", int),
            "INLET_SDK_MAX_BATCH_EVENTS": ("sdk_max_batch_events", int),
            "INLET_DEBUGGER_SIZE": ("debugger_size", int),
            "INLET_ACCESS_LOG": ("access_log", str),
            "INLET_METRICS_TOKEN": ("metrics_token", str),
        }
        for variable, (name, kind) in readers.items():
            if variable in environ:
                values[name] = kind(environ[variable])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
