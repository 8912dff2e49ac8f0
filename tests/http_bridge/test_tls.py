"""HTTPS (Segment delivers only over HTTPS): real certificates, real handshakes."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path

import aiohttp
import pytest
import trustme

from http_bridge.config import BridgeConfig
from tests.stack import basic, start_stack

EVENT = {"type": "track", "userId": "u1", "event": "Over TLS", "messageId": "tls-1"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_with_a_trusted_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    config = BridgeConfig(host="127.0.0.1", port=0, tls_cert=str(tmp_path / "server.pem"),
                          tls_key=str(tmp_path / "server.pem"))  # fmt: skip
    stack = await start_stack(tmp_path, bridge_config=config)
    try:
        assert stack.bridge.scheme == "https"
        url = f"https://127.0.0.1:{stack.bridge.port}/segment"
        headers = {"Authorization": basic(stack.keys["ingest"])}

        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=EVENT, headers=headers, ssl=trusting) as reply,
        ):
            assert reply.status == 200
        _, writer = await asyncio.open_connection("127.0.0.1", stack.bridge.port, ssl=trusting)
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.close()
        await writer.wait_closed()

        # A client that does not trust the certificate is refused in the handshake.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with aiohttp.ClientSession() as session:
                await session.post(
                    url, json=EVENT, headers=headers, ssl=ssl.create_default_context()
                )

        # TLS 1.1 and older are refused by the server.
        old = ssl.create_default_context()
        ca.configure_trust(old)
        with warnings.catch_warnings():  # Python itself deprecates TLS 1.1, as it should
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session:
                await session.post(url, json=EVENT, headers=headers, ssl=old)
    finally:
        await stack.stop()


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError):
        BridgeConfig(tls_cert="server.pem")
