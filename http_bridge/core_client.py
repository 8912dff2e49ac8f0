"""The bridge's view of the core: the `Core` protocol and its gRPC implementation.

`GrpcCore` is the normal transport: one channel, one IngestBatch call per batch.
The channel is bound to the event loop that creates it (grpc.aio), and gRPC does
not survive fork() after a channel exists; so it is opened in the app's startup
(`cleanup_ctx`), never at import time. When core and bridge share a process
(`inlet serve`), inlet_app/in_process.py provides the same protocol without the
network hop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from http_bridge.config import BridgeConfig
from http_bridge.errors import BridgeError, Forbidden, Internal, Unauthorized, Unavailable
from http_bridge.status_map import http_status_for
from inlet.v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc
from service.handoff import Submission, Verdict, item_message, verdict_of
from service.logs import REQUEST_ID

log = logging.getLogger(__name__)

EVENT_SERVICE: Final = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name

MAX_REQUEST_IDS_BYTES: Final = 32 * 1024
"""Budget of the `x-request-id` metadata of one batch call (the core accepts 64 KiB of
metadata). 500 ids of up to 64 characters fit; a larger batch sends no per-request ids."""


def request_id_metadata(request_ids: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`x-request-id`: the ids of the batch's requests in item order, comma-separated,
    so the core logs each event under its HTTP request's id; else the current id."""
    joined = ",".join(request_ids)
    if request_ids and all(request_ids) and len(joined) <= MAX_REQUEST_IDS_BYTES:
        return (("x-request-id", joined),)
    current = REQUEST_ID.get()
    return (("x-request-id", current),) if current else ()


def call_failed(code: grpc.StatusCode, config: BridgeConfig) -> BridgeError:
    """The answer for a call to the core that failed with `code` (not 401/403).

    DEADLINE_EXCEEDED is the bridge's own deadline (`core_timeout_s`) running out: the
    core was reached, or is being reached, but did not answer in time (stalled, or
    slower than the deadline): `core_timeout`. The other transient codes mean it could
    not be reached or refused the call (not listening, connection lost, draining):
    `core_unavailable`. Both are 503 + Retry-After; anything else is a bug."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unavailable(
            f"the core did not answer within {config.core_timeout_s:g} s, retry later",
            "core_timeout",
            config.retry_after_s,
        )
    if http_status_for(code) == 503:
        return Unavailable(
            "the core is unavailable, retry later", "core_unavailable", config.retry_after_s
        )
    return Internal("internal error", "internal")


def channel_credentials(config: BridgeConfig) -> grpc.ChannelCredentials | None:
    """TLS to the core when `--core-tls-ca` is set; a client certificate for mTLS when
    `--core-tls-cert/--core-tls-key` are set too. Raises OSError or ssl.SSLError when
    the files are unreadable, not PEM, or the key does not match the certificate
    (gRPC itself would only find out at the next handshake)."""
    if config.core_tls_ca is None:
        return None
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    check.load_verify_locations(cafile=config.core_tls_ca)
    if config.core_tls_cert is not None:
        check.load_cert_chain(config.core_tls_cert, config.core_tls_key)
    return grpc.ssl_channel_credentials(
        root_certificates=Path(config.core_tls_ca).read_bytes(),
        private_key=Path(config.core_tls_key).read_bytes() if config.core_tls_key else None,
        certificate_chain=Path(config.core_tls_cert).read_bytes() if config.core_tls_cert else None,
    )


def channel_options(config: BridgeConfig) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # A core restart should be noticed within a second, not after the default
        # reconnect backoff of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # Retry only what never reached the core (transparent retries of UNAVAILABLE).
        ("grpc.enable_retries", 1),
        (
            "grpc.service_config",
            json.dumps(
                {
                    "methodConfig": [
                        {
                            "name": [{"service": EVENT_SERVICE}],
                            "retryPolicy": {
                                "maxAttempts": 3,
                                "initialBackoff": "0.05s",
                                "maxBackoff": "0.5s",
                                "backoffMultiplier": 2,
                                "retryableStatusCodes": ["UNAVAILABLE"],
                            },
                        }
                    ]
                }
            ),
        ),
    ]


class Core(Protocol):
    """What the bridge needs from the core."""

    async def ingest_batch(
        self, items: list[Submission], request_ids: Sequence[str] = ()
    ) -> list[Verdict]:
        """One result per item, in order. `request_ids`: the HTTP request id of each
        item, for the core's logs. Raises Unavailable (transient) or Internal."""
        ...

    async def ready(self) -> bool:
        """True when events can be stored now."""
        ...

    async def whoami(self, api_key: str) -> admin_pb2.ApiKey:
        """The key's account, id and scopes. Raises Unauthorized, Forbidden (suspended
        account) or Unavailable."""
        ...

    async def close(self) -> None: ...


class GrpcCore:
    """Calls the core over gRPC. Create inside the running loop; close with `close()`."""

    def __init__(self, config: BridgeConfig) -> None:
        self._config = config
        self._retiring: set[asyncio.Task[None]] = set()
        self._open(channel_credentials(config))

    def _open(self, credentials: grpc.ChannelCredentials | None) -> None:
        config = self._config
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(
                config.core_target, options=channel_options(config)
            )
        else:
            self._channel = grpc.aio.secure_channel(
                config.core_target, credentials, options=channel_options(config)
            )
        self._events = events_pb2_grpc.EventServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def reload_tls(self) -> bool:
        """Re-read the `--core-tls-*` files (on SIGHUP, after a renewal): calls from now
        on go over a new channel that uses them; calls in flight finish on the old one,
        which then closes. False when not using TLS, or when the files are bad (the
        current channel stays)."""
        if self._config.core_tls_ca is None:
            log.info("no TLS files to reload: the bridge reaches the core in plain text")
            return False
        try:
            credentials = channel_credentials(self._config)
        except OSError as exc:  # ssl.SSLError included
            log.error("core TLS files not reloaded, the current ones stay in use: %s", exc)
            return False
        old = self._channel
        self._open(credentials)
        retiring = asyncio.get_running_loop().create_task(
            old.close(grace=self._config.core_timeout_s)
        )
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        log.info("core TLS files reloaded from %s", self._config.core_tls_ca)
        return True

    async def close(self) -> None:
        await self._channel.close()
        await asyncio.gather(*self._retiring)

    async def ingest_batch(
        self, items: list[Submission], request_ids: Sequence[str] = ()
    ) -> list[Verdict]:
        """One IngestBatch call; raises Unavailable (transient) or Internal (a bug)."""
        try:
            response = await self._events.IngestBatch(
                events_pb2.IngestBatchRequest(items=[item_message(item) for item in items]),
                timeout=self._config.core_timeout_s,
                metadata=request_id_metadata(request_ids),
            )
        except grpc.aio.AioRpcError as exc:
            raise call_failed(exc.code(), self._config) from exc
        return [verdict_of(result) for result in response.results]

    async def whoami(self, api_key: str) -> admin_pb2.ApiKey:
        try:
            return await self._admin.WhoAmI(
                admin_pb2.WhoAmIRequest(),
                metadata=(("authorization", f"Bearer {api_key}"),),
                timeout=self._config.core_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            status = http_status_for(exc.code())
            if status == 401:
                raise Unauthorized("the API key is not valid", "invalid_api_key") from None
            if status == 403:
                raise Forbidden(exc.details() or "forbidden", "forbidden") from None
            raise call_failed(exc.code(), self._config) from exc

    async def ready(self) -> bool:
        """True when the core answers its health check with SERVING for EventService."""
        try:
            reply = await self._health.Check(  # type: ignore[attr-defined]  # stubs lack aio
                health_pb2.HealthCheckRequest(service=EVENT_SERVICE), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
