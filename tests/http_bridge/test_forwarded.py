"""X-Forwarded-For/-Proto are believed only from the proxies the operator named."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from http_bridge.config import BridgeConfig
from http_bridge.forwarded import Forwarding
from service.logs import JsonFormatter
from tests.stack import basic, start_stack

PROXIES = ("10.0.0.0/8", "192.0.2.7")


def test_an_untrusted_peer_cannot_forge_its_address() -> None:
    client = Forwarding(PROXIES).client("203.0.113.9", "1.2.3.4", "https", "http")
    assert client == ("203.0.113.9", "http")


def test_a_trusted_proxy_names_the_client() -> None:
    client = Forwarding(PROXIES).client("10.1.2.3", "198.51.100.20", "https", "http")
    assert client == ("198.51.100.20", "https")


def test_a_chain_is_walked_through_trusted_hops_only() -> None:
    # The client forged "6.6.6.6"; proxies 192.0.2.7 and 10.1.2.3 appended what they saw.
    forwarding = Forwarding(PROXIES)
    chain = "6.6.6.6, 198.51.100.20, 192.0.2.7"
    assert forwarding.client("10.1.2.3", chain, None, "http").address == "198.51.100.20"
    assert forwarding.client("10.1.2.3", "garbage", None, "http").address == "10.1.2.3"
    assert forwarding.client("10.1.2.3", "6.6.6.6", "gopher", "http").scheme == "http"


def test_nothing_trusted_by_default() -> None:
    assert Forwarding(()).client("10.1.2.3", "1.2.3.4", "https", "http") == ("10.1.2.3", "http")


def test_a_bad_range_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        BridgeConfig(trusted_proxies=("10.0.0.0/33",))
    assert BridgeConfig.from_env({"INLET_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}).trusted_proxies == (
        "10.0.0.0/8",
        "::1",
    )


@pytest.mark.parametrize(("trusted", "logged"), [((), "127.0.0.1"), (("127.0.0.1",), "1.2.3.4")])
async def test_the_logged_client_address(
    tmp_path: Path, trusted: tuple[str, ...], logged: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("inlet.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    config = BridgeConfig(host="127.0.0.1", port=0, trusted_proxies=trusted)
    stack = await start_stack(tmp_path, bridge_config=config)
    try:
        headers = {
            "Authorization": basic(stack.keys["ingest"]),
            "X-Forwarded-For": "1.2.3.4",
            "X-Forwarded-Proto": "https",
        }
        event = {"type": "track", "userId": "u1", "event": "Proxied"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(stack.url + "/segment", json=event, headers=headers) as reply,
        ):
            assert reply.status == 200
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
        await stack.stop()
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["client"] == logged
    assert line["scheme"] == ("https" if trusted else "http")
