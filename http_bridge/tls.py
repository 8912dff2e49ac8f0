"""The bridge's TLS context, and swapping its certificate in place (SIGHUP).

Certificates from ACME and internal CAs are renewed every few weeks; a restart to
pick one up would drop every open connection. `load_cert_chain` on the live context
changes what new handshakes present; connections already established keep theirs.
"""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger(__name__)


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2 and newer, Python's default (modern) ciphers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def reload_certificate(context: ssl.SSLContext, cert: str, key: str) -> bool:
    """Load `cert`/`key` into the live `context`; False (old one kept) if they are bad.

    The files are tried on a scratch context first: `load_cert_chain` replaces the
    certificate before it checks the key, so a failure half-way on the live context
    would leave it presenting a certificate it has no key for.
    """
    try:
        server_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS certificate not reloaded, the previous one stays in use: %s", exc)
        return False
    context.load_cert_chain(cert, key)
    log.info("TLS certificate reloaded from %s", cert)
    return True
