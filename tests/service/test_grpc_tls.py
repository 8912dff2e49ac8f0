"""gRPC over TLS, and client certificates (mTLS) between bridges and the core."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from http_bridge.config import BridgeConfig
from inlet_app.cli import reload_tls_on_sighup
from service.config import CoreConfig
from service.server import start_core
from service.store import SqliteStore
from tests.stack import Stack, basic, start_stack
from tests.waiting import eventually

EVENT = {"type": "track", "userId": "u1", "event": "Over mTLS"}


def write(cert: trustme.LeafCert, folder: Path, name: str) -> tuple[str, str]:
    key, chain = folder / f"{name}.key", folder / f"{name}.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(chain), str(key)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_cert, server_key = write(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "core")
    client_cert, client_key = write(ca.issue_cert("bridge.internal"), tmp_path, "bridge")
    return {
        "ca": str(tmp_path / "ca.pem"),
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


async def tls_core_stack(tmp_path: Path, pki: dict[str, str]) -> Stack:
    """A stack whose core serves TLS (no client certificates) to a bridge trusting its CA."""
    core = CoreConfig(
        listen="127.0.0.1:0", grpc_tls_cert=pki["server_cert"], grpc_tls_key=pki["server_key"]
    )
    bridge = BridgeConfig(host="127.0.0.1", port=0, core_tls_ca=pki["ca"])
    return await start_stack(tmp_path, core, bridge)


def renewal(folder: Path) -> tuple[str, str, str]:
    """A certificate for 127.0.0.1 from a new CA (easy to tell apart from the first one),
    written under `folder`: (CA file, certificate file, key file)."""
    ca = trustme.CA()
    folder.mkdir()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert, key = write(ca.issue_cert("127.0.0.1"), folder, "core")
    return str(folder / "ca.pem"), cert, key


def mtls_core(pki: dict[str, str]) -> CoreConfig:
    return CoreConfig(
        listen="127.0.0.1:0",
        grpc_tls_cert=pki["server_cert"],
        grpc_tls_key=pki["server_key"],
        grpc_client_ca=pki["ca"],
    )


async def post(stack: Stack) -> int:
    headers = {"Authorization": basic(stack.keys["ingest"])}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + "/segment", json=EVENT, headers=headers) as reply,
    ):
        return reply.status


async def test_a_bridge_with_a_client_certificate_stores_events(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    bridge = BridgeConfig(
        host="127.0.0.1",
        port=0,
        core_tls_ca=pki["ca"],
        core_tls_cert=pki["client_cert"],
        core_tls_key=pki["client_key"],
    )
    stack = await start_stack(tmp_path, mtls_core(pki), bridge)
    try:
        assert await post(stack) == 200
    finally:
        await stack.stop()


async def test_a_client_without_a_certificate_is_refused(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    bridge = BridgeConfig(host="127.0.0.1", port=0, core_tls_ca=pki["ca"], core_timeout_s=1.0)
    stack = await start_stack(tmp_path, mtls_core(pki), bridge)
    try:
        assert await post(stack) == 503  # the bridge cannot reach the core: Segment retries
        credentials = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
        for channel in (
            grpc.aio.secure_channel(stack.core_target, credentials),
            grpc.aio.insecure_channel(stack.core_target),
        ):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stack.stop()


async def test_tls_without_client_certificates(tmp_path: Path, pki: dict[str, str]) -> None:
    stack = await tls_core_stack(tmp_path, pki)
    try:
        assert await post(stack) == 200
    finally:
        await stack.stop()


def test_half_configured_tls_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError):
        CoreConfig(grpc_tls_cert="core.pem")
    with pytest.raises(ValueError):
        CoreConfig(grpc_client_ca="ca.pem")
    with pytest.raises(ValueError):
        BridgeConfig(core_tls_cert="bridge.pem", core_tls_key="bridge.key")  # no CA


async def _health(target: str, ca: str, client: tuple[str, str] | None = None) -> str:
    """Check health over a new channel trusting only `ca`: "ok", or the error's code."""
    key = cert = None
    if client is not None:
        cert, key = Path(client[0]).read_bytes(), Path(client[1]).read_bytes()
    credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes(), key, cert)
    async with grpc.aio.secure_channel(target, credentials) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
    return "ok"


async def test_the_core_certificate_is_replaced_while_serving(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    """After a renewal (new files, SIGHUP): new connections get the new certificate, bad
    files leave the old one in use, and open connections keep working throughout."""
    stack = await tls_core_stack(tmp_path, pki)
    try:
        target, running = stack.core_target, stack.core
        assert running is not None
        assert await _health(target, pki["ca"]) == "ok"
        assert await post(stack) == 200  # the bridge's channel is open from here on

        new_ca, new_cert, new_key = renewal(tmp_path / "new")
        Path(pki["server_cert"]).write_bytes(Path(new_cert).read_bytes())
        Path(pki["server_key"]).write_bytes(b"not a key")  # half-written renewal
        assert running.reload_tls() is False  # bad files: the old certificate stays
        assert await _health(target, pki["ca"]) == "ok"

        Path(pki["server_key"]).write_bytes(Path(new_key).read_bytes())
        assert running.reload_tls() is True
        assert await _health(target, new_ca) == "ok"
        assert await _health(target, pki["ca"]) == "UNAVAILABLE"  # the old one is gone
        assert await post(stack) == 200  # the open connection keeps its session
    finally:
        await stack.stop()


async def test_a_renewed_client_ca_applies_to_new_connections(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    """Bridges start getting certificates from a second CA: once the core's client-CA
    file lists it and the core reloads, their connections are accepted."""
    bridge = BridgeConfig(
        host="127.0.0.1",
        port=0,
        core_tls_ca=pki["ca"],
        core_tls_cert=pki["client_cert"],
        core_tls_key=pki["client_key"],
    )
    stack = await start_stack(tmp_path, mtls_core(pki), bridge)
    try:
        assert stack.core is not None
        second = trustme.CA()
        (tmp_path / "second").mkdir()
        client = write(second.issue_cert("bridge-2.internal"), tmp_path / "second", "bridge")
        assert await _health(stack.core_target, pki["ca"], client) == "UNAVAILABLE"
        bundle = Path(pki["ca"]).read_bytes() + second.cert_pem.bytes()
        Path(pki["ca"]).write_bytes(bundle)  # the core's client CA file (and ours) grows
        assert stack.core.reload_tls() is True
        assert await _health(stack.core_target, pki["ca"], client) == "ok"
        original = (pki["client_cert"], pki["client_key"])
        assert await _health(stack.core_target, pki["ca"], original) == "ok"
    finally:
        await stack.stop()


async def test_sighup_reloads_the_core_certificate(tmp_path: Path, pki: dict[str, str]) -> None:
    """`inlet serve`'s SIGHUP handler reaches the core (not only the bridge)."""
    stack = await tls_core_stack(tmp_path, pki)
    new_ca, new_cert, new_key = renewal(tmp_path / "new")
    Path(pki["server_cert"]).write_bytes(Path(new_cert).read_bytes())
    Path(pki["server_key"]).write_bytes(Path(new_key).read_bytes())
    loop = asyncio.get_running_loop()
    reload_tls_on_sighup(stack.bridge, stack.core)
    try:
        os.kill(os.getpid(), signal.SIGHUP)

        async def healthy() -> bool:
            return await _health(stack.core_target, new_ca) == "ok"

        # The handler runs on the loop's next turns.
        await eventually(healthy, what="the core to serve the new certificate", timeout=5)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await stack.stop()


async def test_a_bridge_rereads_its_core_tls_files_on_sighup(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    """The core comes back with a certificate from a new CA: the bridge's calls fail
    until its CA file names the new CA and it reloads (SIGHUP, as `serve bridge`
    handles it); bad files leave the current channel in use."""
    core = CoreConfig(
        listen="127.0.0.1:0", grpc_tls_cert=pki["server_cert"], grpc_tls_key=pki["server_key"]
    )
    bridge = BridgeConfig(host="127.0.0.1", port=0, core_tls_ca=pki["ca"], core_timeout_s=1.0)
    stack = await start_stack(tmp_path, core, bridge)
    loop = asyncio.get_running_loop()
    try:
        assert await post(stack) == 200
        port = stack.core.port
        await stack.core.stop(grace=0)
        new_ca, new_cert, new_key = renewal(tmp_path / "new")
        moved = CoreConfig(listen=f"127.0.0.1:{port}", grpc_tls_cert=new_cert, grpc_tls_key=new_key)
        stack.core = await start_core(moved, SqliteStore(tmp_path / "inlet.db"))
        assert await post(stack) == 503  # not trusted: Segment retries, nothing is lost

        Path(pki["ca"]).write_bytes(b"not a certificate")  # a half-written renewal
        assert stack.bridge.reload_core_tls() is False
        assert await post(stack) == 503

        Path(pki["ca"]).write_bytes(Path(new_ca).read_bytes())
        reload_tls_on_sighup(stack.bridge, None)  # `inlet serve bridge`
        os.kill(os.getpid(), signal.SIGHUP)

        async def delivered() -> bool:
            return await post(stack) == 200

        # The handler runs on the loop's next turns.
        await eventually(delivered, what="the bridge to trust the new CA")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await stack.stop()


async def test_a_bridge_without_core_tls_has_nothing_to_reload(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        assert stack.bridge.reload_core_tls() is False
        assert await post(stack) == 200
    finally:
        await stack.stop()
