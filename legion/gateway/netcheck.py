"""Egress address policy: which addresses the host refuses to connect to for an agent.

An agent asking the host to fetch a URL must not reach the host's own services, the
operator's LAN, or a cloud metadata endpoint. So every address a request would connect
to is checked here, after resolution, and refused when it is:

* loopback, private (RFC 1918, fc00::/7), link-local, CGNAT (100.64.0.0/10), multicast,
  reserved, unspecified, broadcast, documentation or benchmarking space, or a cloud
  metadata address;
* an IPv6 form that embeds such an IPv4 address: IPv4-mapped (``::ffff:a.b.c.d``),
  NAT64 (``64:ff9b::/96``), 6to4 (``2002::/16``) and Teredo (``2001::/32``, server and
  client); IPv4-compatible addresses (``::a.b.c.d``, deprecated) are refused outright;
* anything else Python does not consider globally reachable (``not ip.is_global``).

Host literals are read the way glibc reads them, so ``2130706433``, ``0177.0.0.1``,
``0x7f.1`` and ``127.1`` are all 127.0.0.1 here too.

The operator opens exact ``HOST:PORT`` pairs with ``[egress] allow``; a pair matches the
host as written in the URL or any address it resolves to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Checked in order; the first match names the reason.
V4_RULES: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("169.254.169.254/32"), "cloud metadata address"),
    (_V4("100.100.100.200/32"), "cloud metadata address"),
    (_V4("0.0.0.0/8"), "unspecified ('this network') address"),
    (_V4("127.0.0.0/8"), "loopback address"),
    (_V4("10.0.0.0/8"), "private address (RFC 1918)"),
    (_V4("172.16.0.0/12"), "private address (RFC 1918)"),
    (_V4("192.168.0.0/16"), "private address (RFC 1918)"),
    (_V4("100.64.0.0/10"), "shared (CGNAT) address"),
    (_V4("169.254.0.0/16"), "link-local address"),
    (_V4("192.0.0.0/24"), "IETF protocol assignment"),
    (_V4("192.0.2.0/24"), "documentation address"),
    (_V4("198.51.100.0/24"), "documentation address"),
    (_V4("203.0.113.0/24"), "documentation address"),
    (_V4("198.18.0.0/15"), "benchmarking address"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast address"),
    (_V4("224.0.0.0/4"), "multicast address"),
    (_V4("255.255.255.255/32"), "broadcast address"),
    (_V4("240.0.0.0/4"), "reserved address"),
)

V6_RULES: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("fd00:ec2::254/128"), "cloud metadata address"),
    (_V6("::/128"), "unspecified address"),
    (_V6("::1/128"), "loopback address"),
    (_V6("fc00::/7"), "private (unique local) address"),
    (_V6("fe80::/10"), "link-local address"),
    (_V6("fec0::/10"), "site-local address"),
    (_V6("ff00::/8"), "multicast address"),
    (_V6("2001:db8::/32"), "documentation address"),
    (_V6("3fff::/20"), "documentation address"),
    (_V6("2001:2::/48"), "benchmarking address"),
    (_V6("100::/64"), "discard-only address"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64 address"),
)

NAT64 = _V6("64:ff9b::/96")
IPV4_COMPATIBLE = _V6("::/96")

# What glibc's inet_aton accepts: one to four dot-separated decimal, octal or hex parts.
_V4_LITERAL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.I)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address `host` denotes when it is an IP literal in any form glibc accepts, or None.

    Accepts ``[v6]`` with brackets, v6 with a zone (``fe80::1%eth0``), dotted quads and the
    inet_aton forms: ``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``.
    """
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    if not _V4_LITERAL.fullmatch(text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, why in V4_RULES:
        if ip in network:
            return why
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _embedded(form: str, v4: ipaddress.IPv4Address) -> str | None:
    why = _v4_reason(v4)
    return f"{form} form of {v4} ({why})" if why else None


def _v6_reason(ip: ipaddress.IPv6Address) -> str | None:
    ip = ipaddress.IPv6Address(int(ip))  # drop any zone
    for network, why in V6_RULES:
        if ip in network:
            return why
    mapped = ip.ipv4_mapped
    if mapped is not None:  # a dual-stack socket connects to the IPv4 address itself
        return _embedded("IPv4-mapped", mapped)
    if ip in IPV4_COMPATIBLE:
        v4 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        return _embedded("IPv4-compatible", v4) or (
            f"IPv4-compatible form of {v4} (deprecated, never routed)"
        )
    if ip in NAT64:  # DNS64 networks map every IPv4 destination here
        return _embedded("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        embedded = _embedded("6to4", ip.sixtofour)
        if embedded:
            return embedded
    if ip.teredo is not None:
        server, client = ip.teredo
        embedded = _embedded("Teredo (server)", server) or _embedded("Teredo (client)", client)
        if embedded:
            return embedded
    if not ip.is_global:
        return "not a globally routable address"
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why egress to `ip` is refused, or None when it is an ordinary public address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_reason(ip)
    return _v6_reason(ip)


def is_forbidden(ip: IPAddress) -> bool:
    return forbidden_reason(ip) is not None


def normalize_host(host: str) -> str:
    """Lower-case, without brackets or a trailing dot; IP literals in canonical form."""
    ip = parse_ip_literal(host)
    if ip is not None:
        return str(ip)
    return host.lower().rstrip(".")


def split_host_port(entry: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or ``v6:port`` (last colon) into a normalized pair."""
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return normalize_host(host), int(port)


@dataclass(frozen=True)
class AllowList:
    """Exact ``HOST:PORT`` pairs the operator opened despite the address checks."""

    pairs: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        pairs = {pair for pair in map(split_host_port, entries) if pair is not None}
        return cls(frozenset(pairs))

    def allows(self, host: str, port: int) -> bool:
        return (normalize_host(host), port) in self.pairs


def refusal(host: str, port: int, addresses: Sequence[IPAddress], allow: AllowList) -> str | None:
    """Why connecting to `host`:`port` at `addresses` is refused, or None when it is not.

    Refused when any address is forbidden, unless the pair is allow-listed by the host as
    written or by that address.
    """
    if allow.allows(host, port):
        return None
    if not addresses:
        return f"{host} has no address"
    for ip in addresses:
        if allow.allows(str(ip), port):
            continue
        why = forbidden_reason(ip)
        if why is not None:
            return f"{ip}: {why}"
    return None
