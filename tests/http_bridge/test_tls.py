"""HTTPS (Segment delivers only over HTTPS): real certificates, real handshakes."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from http_bridge.config import BridgeConfig
from inlet_app.cli import reload_tls_on_sighup
from tests.stack import Stack, basic, start_stack
from tests.waiting import eventually

EVENT = {"type": "track", "userId": "u1", "event": "Over TLS", "messageId": "tls-1"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_with_a_trusted_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    config = BridgeConfig(
        host="127.0.0.1",
        port=0,
        tls_cert=str(tmp_path / "server.pem"),
        tls_key=str(tmp_path / "server.pem"),
    )
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


# -- certificate reload (SIGHUP) ------------------------------------------------------------


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Connection:
    """One raw keep-alive HTTPS connection, to prove it survives a reload."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port, ssl=context))

    async def get(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode().lower()
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        await self.reader.readexactly(length)
        return int(head.split()[1])

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def tls_stack(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[Stack]:
    pem = str(tmp_path / "server.pem")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    config = BridgeConfig(host="127.0.0.1", port=0, tls_cert=pem, tls_key=pem)
    stack = await start_stack(tmp_path, bridge_config=config)
    yield stack
    await stack.stop()


async def test_reload_new_connections_get_the_new_certificate_open_ones_keep_working(
    tmp_path: Path, ca: trustme.CA, tls_stack: Stack
) -> None:
    port, new_ca = tls_stack.bridge.port, trustme.CA()
    kept = await Connection.open(port, trusting(ca))
    assert await kept.get("/healthz") == 200

    new_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    assert tls_stack.bridge.reload_tls()

    fresh = await Connection.open(port, trusting(new_ca))
    assert await fresh.get("/healthz") == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        await Connection.open(port, trusting(ca))
    assert await kept.get("/healthz") == 200  # same connection, same (old) certificate
    for connection in (kept, fresh):
        await connection.close()


async def test_bad_files_keep_the_current_certificate(
    tmp_path: Path, ca: trustme.CA, tls_stack: Stack
) -> None:
    other = trustme.CA().issue_cert("127.0.0.1")
    # A certificate with a key that is not its own: half-loaded it would break handshakes.
    pem = other.cert_chain_pems[0].bytes() + ca.issue_cert("x").private_key_pem.bytes()
    (tmp_path / "server.pem").write_bytes(pem)
    assert not tls_stack.bridge.reload_tls()
    (tmp_path / "server.pem").unlink()
    assert not tls_stack.bridge.reload_tls()
    connection = await Connection.open(tls_stack.bridge.port, trusting(ca))
    assert await connection.get("/healthz") == 200
    await connection.close()


async def test_sighup_reloads_the_certificate(
    tmp_path: Path, ca: trustme.CA, tls_stack: Stack
) -> None:
    new_ca = trustme.CA()
    new_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    loop = asyncio.get_running_loop()
    reload_tls_on_sighup(tls_stack.bridge, tls_stack.core)
    try:
        os.kill(os.getpid(), signal.SIGHUP)

        async def reloaded() -> Connection | None:
            try:
                return await Connection.open(tls_stack.bridge.port, trusting(new_ca))
            except ssl.SSLCertVerificationError:
                return None

        # The handler runs on the loop's next turns.
        connection = await eventually(reloaded, what="the new certificate", timeout=5)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
    assert await connection.get("/healthz") == 200
    await connection.close()
