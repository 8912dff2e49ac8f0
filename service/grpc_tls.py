"""The core's gRPC TLS certificate, replaceable while serving (SIGHUP after a renewal).

gRPC's dynamic server credentials ask a callback, before each new connection's
handshake, whether the certificate changed. `reload()` checks the files first (the key
must match the certificate, the client CA must parse): bad files are logged and the
certificate in use stays. Connections already open keep the certificate they
started with; new ones get the new one.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class ReloadableCredentials:
    """Server credentials for `cert`/`key` (and `client_ca`: then callers need a
    certificate it signed), whose files `reload()` reads again."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        self._cert, self._key, self._client_ca = cert, key, client_ca
        # The callback runs on gRPC's own threads; reload() on the event loop.
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            # gRPC documents None from the callback as "no change"; its stub does not.
            self._next_configuration,  # type: ignore[arg-type]
            require_client_authentication=client_ca is not None,
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        """The files as gRPC takes them, checked first: gRPC itself would only find a
        key that does not match its certificate at the next handshake, and fail it.
        The bytes checked are the bytes used (a renewal may be rewriting the files)."""
        key, cert = Path(self._key).read_bytes(), Path(self._cert).read_bytes()
        client_ca = Path(self._client_ca).read_bytes() if self._client_ca else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as scratch:
            pair = Path(scratch) / "pair.pem"
            pair.write_bytes(cert + b"\n" + key)
            # An encrypted key fails here rather than prompting on a terminal.
            context.load_cert_chain(pair, password=lambda: b"")
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)

    def reload(self) -> bool:
        """Read the files again; True if new connections will use them."""
        try:
            configuration = self._configuration()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("gRPC TLS certificate not reloaded, the previous one stays in use: %s", exc)
            return False
        with self._lock:
            self._pending = configuration
        log.info("gRPC TLS certificate reloaded from %s", self._cert)
        return True

    def _next_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's callback: the new configuration once after a reload, else None (no change)."""
        with self._lock:
            configuration, self._pending = self._pending, None
        return configuration
