"""The client's address behind TLS-terminating proxies (`X-Forwarded-For`/`-Proto`).

Anyone can send `X-Forwarded-For`; only a proxy the operator named
(`--trusted-proxy CIDR`) is believed. From the connection's peer, the chain is
walked right to left while the hop is a trusted proxy: the first address that is
not one is the client (what nginx's `real_ip_recursive` does). The result is used
for logs only, never for a security decision.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """`10.0.0.0/8`, `192.0.2.7` (one host), `::1`; ValueError names a bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR range: {cidr!r}") from None
    return tuple(networks)


class Client(NamedTuple):
    address: str | None
    scheme: str


class Forwarding:
    """Resolves a request's client address and scheme from the trusted proxies."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted = parse_networks(trusted)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._trusted)

    def client_of(self, request: web.BaseRequest) -> Client:
        """The client of `request` and the scheme it used."""
        if not self._trusted:  # nothing to believe: no forwarded header to read
            return Client(request.remote, request.scheme)
        return self.client(
            request.remote,
            request.headers.get("X-Forwarded-For"),
            request.headers.get("X-Forwarded-Proto"),
            request.scheme,
        )

    def client(
        self, peer: str | None, forwarded_for: str | None, forwarded_proto: str | None, scheme: str
    ) -> Client:
        """The client behind `peer` (the TCP peer) and the scheme it used."""
        if not self._trusted or peer is None or not self._is_trusted(peer):
            return Client(peer, scheme)  # a forged header from an untrusted peer is ignored
        if forwarded_proto:
            proto = forwarded_proto.rpartition(",")[2].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
        address = peer
        hops = forwarded_for.split(",") if forwarded_for else []
        for hop in reversed(hops):
            if not self._is_trusted(address):
                break
            candidate = hop.strip()
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                break  # garbage in the chain: keep the last address a trusted hop vouched for
            address = candidate
        return Client(address, scheme)
