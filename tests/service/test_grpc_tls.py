"""gRPC over TLS, and client certificates (mTLS) between bridges and the core."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from http_bridge.config import BridgeConfig
from service.config import CoreConfig
from tests.stack import Stack, basic, start_stack

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
    return {"ca": str(tmp_path / "ca.pem"), "server_cert": server_cert,
            "server_key": server_key, "client_cert": client_cert, "client_key": client_key}  # fmt: skip


def mtls_core(pki: dict[str, str]) -> CoreConfig:
    return CoreConfig(listen="127.0.0.1:0", grpc_tls_cert=pki["server_cert"],
                      grpc_tls_key=pki["server_key"], grpc_client_ca=pki["ca"])  # fmt: skip


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
    bridge = BridgeConfig(host="127.0.0.1", port=0, core_tls_ca=pki["ca"],
                          core_tls_cert=pki["client_cert"], core_tls_key=pki["client_key"])  # fmt: skip
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
    core = CoreConfig(listen="127.0.0.1:0", grpc_tls_cert=pki["server_cert"],
                      grpc_tls_key=pki["server_key"])  # fmt: skip
    stack = await start_stack(tmp_path, core, BridgeConfig(host="127.0.0.1", port=0,
                                                           core_tls_ca=pki["ca"]))  # fmt: skip
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
