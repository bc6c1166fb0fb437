"""The egress address policy: every forbidden range, every embedded form, every literal form."""

from __future__ import annotations

import ipaddress

import pytest

from legion.gateway.netcheck import (
    AllowList,
    forbidden_reason,
    is_forbidden,
    normalize_host,
    parse_ip_literal,
    refusal,
    split_host_port,
)


def teredo(server: str, client: str) -> str:
    """A Teredo address (2001::/32) for `server` and `client` (stored inverted)."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address(value))


FORBIDDEN: list[tuple[str, str]] = [
    # IPv4
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.255", "CGNAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.0.0.8", "IETF"),
    ("192.88.99.1", "6to4 relay"),
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fd00:ec2::254", "metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001:2::1", "benchmarking"),
    ("100::1", "discard"),
    # IPv6 forms that embed IPv4
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1 (loopback"),
    ("::ffff:10.1.2.3", "IPv4-mapped form of 10.1.2.3 (private"),
    ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254 (cloud metadata"),
    ("::ffff:7f00:1", "IPv4-mapped form of 127.0.0.1"),
    ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1 (loopback"),
    ("::8.8.8.8", "IPv4-compatible form of 8.8.8.8 (deprecated"),
    ("64:ff9b::127.0.0.1", "NAT64 form of 127.0.0.1 (loopback"),
    ("64:ff9b::a00:1", "NAT64 form of 10.0.0.1 (private"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254 (cloud metadata"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:7f00:1::1", "6to4 form of 127.0.0.1 (loopback"),
    ("2002:a9fe:a9fe::", "6to4 form of 169.254.169.254 (cloud metadata"),
    ("2002:c0a8:101::1", "6to4 form of 192.168.1.1 (private"),
    (teredo("8.8.8.8", "127.0.0.1"), "Teredo (client) form of 127.0.0.1 (loopback"),
    (teredo("10.0.0.1", "8.8.8.8"), "Teredo (server) form of 10.0.0.1 (private"),
    (teredo("8.8.8.8", "1.1.1.1"), "not a globally routable"),  # Teredo is not global
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",  # just outside 172.16/12
    "100.128.0.1",  # just outside 100.64/10
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # mapped public: a dual-stack socket reaches 8.8.8.8 itself
    "64:ff9b::808:808",  # NAT64 of a public address (DNS64 networks)
    "2002:808:808::1",  # 6to4 of a public address
]


@pytest.mark.parametrize(("address", "why"), FORBIDDEN)
def test_forbidden_addresses(address: str, why: str) -> None:
    ip = ipaddress.ip_address(address)
    reason = forbidden_reason(ip)
    assert reason is not None and why in reason, reason
    assert is_forbidden(ip)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


LITERALS: list[tuple[str, str | None]] = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),  # decimal
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0x7f.1", "127.0.0.1"),  # hex, short
    ("0x7f000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # short form
    ("127.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("012.1", "10.0.0.1"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("example.com", None),
    ("cafe", None),  # hex needs 0x
    ("1.2.3.4.nip.io", None),
    ("127.0.0.1.", None),  # a name to the resolver (whose answer is checked)
    ("1e3", None),
    ("4294967296", None),  # out of range
    ("256.0.0.1", None),
    ("[not-v6]", None),
    ("", None),
]


@pytest.mark.parametrize(("literal", "expected"), LITERALS)
def test_ip_literals_read_like_glibc(literal: str, expected: str | None) -> None:
    ip = parse_ip_literal(literal)
    assert (str(ip) if ip is not None else None) == expected


@pytest.mark.parametrize(
    "literal", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "2852039166"]
)
def test_literal_forms_are_forbidden(literal: str) -> None:
    ip = parse_ip_literal(literal)
    assert ip is not None and is_forbidden(ip)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("LocalHost:80", ("localhost", 80)),
        ("[::1]:443", ("::1", 443)),
        ("::1:443", ("::1", 443)),
        ("api.internal.:9000", ("api.internal", 9000)),
        ("0x7f.1:81", ("127.0.0.1", 81)),
        ("127.0.0.1", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:65536", None),
        (":80", None),
        ("host:http", None),
    ],
)
def test_allow_entries(entry: str, expected: tuple[str, int] | None) -> None:
    assert split_host_port(entry) == expected


def test_normalize_host() -> None:
    assert normalize_host("Example.COM.") == "example.com"
    assert normalize_host("[::FFFF:127.0.0.1]") == "::ffff:7f00:1"
    assert normalize_host("2130706433") == "127.0.0.1"


LOOP = [ipaddress.ip_address("127.0.0.1")]
PUBLIC = [ipaddress.ip_address("93.184.216.34")]
MIXED = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")]


@pytest.mark.parametrize(
    ("allow", "host", "port", "addresses", "refused"),
    [
        ([], "example.com", 443, PUBLIC, False),
        ([], "example.com", 443, MIXED, True),  # any forbidden address refuses
        ([], "localhost", 8080, LOOP, True),
        (["localhost:8080"], "localhost", 8080, LOOP, False),  # by the host as written
        (["localhost:8080"], "localhost", 8081, LOOP, True),  # exact port only
        (["localhost:8080"], "LOCALHOST.", 8080, LOOP, False),
        (["127.0.0.1:8080"], "localhost", 8080, LOOP, False),  # by resolved address
        (["127.0.0.1:8080"], "0x7f.1", 8080, LOOP, False),
        (["127.0.0.1:8080"], "other", 8080, [*LOOP, ipaddress.ip_address("10.0.0.1")], True),
        (["10.0.0.5:443"], "example.com", 443, MIXED, False),
        (["example.com:443"], "example.com", 443, MIXED, False),
        ([], "nothing", 443, [], True),
    ],
)
def test_refusal_with_allow_list(
    allow: list[str], host: str, port: int, addresses: list[ipaddress.IPv4Address], refused: bool
) -> None:
    why = refusal(host, port, list(addresses), AllowList.parse(allow))
    assert (why is not None) == refused, why
