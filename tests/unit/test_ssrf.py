"""The SSRF guard: the pure URL check, the address rules and resolution (RELIABILITY item 23)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import pytest

from openpse.domain.errors import InvalidRequest
from openpse.webhooks import ssrf
from openpse.webhooks.ssrf import (
    IPAddress,
    UnresolvableWebhookHost,
    UnsafeWebhookURL,
    check_url,
    is_forbidden_ip,
    parse_and_check_url,
    resolve_and_vet,
)

# Refused in sandbox and live, with or without OPENPSE_ALLOW_LOCAL_WEBHOOKS.
ALWAYS_REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.1.1/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://0.0.0.0/",
    "http://[::]/",
    "http://100.64.0.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://127.0.0.1./",
    "http://0x7F.1/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://198.18.0.1/",
    "http://192.0.2.10/",
    "http://[2001:db8::1]/",
    "http://[ff02::1]/",
    "http://[2001::1]/",  # Teredo
    "http://1.2.3.4.5/",
    "http://256.1.1.1/",
    "http://0x100000000/",
    "http://1.2.3.08/",
]

# Refused unless the sandbox allows local webhooks.
LOOPBACK = [
    "http://127.0.0.1:8080/hook",
    "http://127.5.6.7/",
    "http://[::1]:8080/hook",
    "http://localhost:8080/hook",
    "http://LOCALHOST./",
    "http://hooks.localhost/",
]

MALFORMED = [
    "ftp://example.com/",
    "javascript:alert(1)",
    "//example.com/",
    "http:///path",
    "http://user:pass@example.com/",
    "http://user@example.com/",
    "http://example.com/#frag",
    "http://exa mple.com/",
    "http://example.com/\t",
    "http://example.com\\@127.0.0.1/",
    "http://ex\u00e4mple.com/",
    "http://example.com:0/",
    "http://example.com:65536/",
    "http://example.com:+80/",
    "http://example.com:/",
    "http://-bad-.example/",
    "http://under..dots/",
    "http://%31%32%37.0.0.1/",
    "http://[::1/",
    "http://[fe80::1%25eth0]/",
    "http://" + "a" * 64 + ".example/",
    "https://example.com/" + "a" * 2048,
]


@pytest.mark.parametrize("url", ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_local", [False, True])
def test_always_refused(url: str, allow_local: bool) -> None:
    with pytest.raises(UnsafeWebhookURL):
        parse_and_check_url(url, livemode=False, allow_local=allow_local)


@pytest.mark.parametrize("url", LOOPBACK)
def test_loopback_refused_unless_sandbox_allows_local(url: str) -> None:
    with pytest.raises(UnsafeWebhookURL, match="OPENPSE_ALLOW_LOCAL_WEBHOOKS"):
        parse_and_check_url(url, livemode=False, allow_local=False)
    parse_and_check_url(url, livemode=False, allow_local=True)
    https = url.replace("http://", "https://", 1)
    with pytest.raises(UnsafeWebhookURL):
        parse_and_check_url(https, livemode=True, allow_local=True)


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeWebhookURL):
        parse_and_check_url(url, livemode=False, allow_local=True)


def test_refusal_is_a_400_invalid_webhook_url_on_param_url() -> None:
    with pytest.raises(UnsafeWebhookURL) as info:
        parse_and_check_url("http://169.254.169.254/", livemode=False, allow_local=True)
    assert isinstance(info.value, InvalidRequest)
    assert info.value.code == "invalid_webhook_url"
    assert info.value.param == "url"
    assert "cloud metadata" in info.value.message


def test_numeric_forms_name_the_address_they_stand_for() -> None:
    for host in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1"):
        with pytest.raises(UnsafeWebhookURL, match=r"non-canonical way to write 127\.0\.0\.1"):
            parse_and_check_url(f"http://{host}/", livemode=False, allow_local=True)


def test_live_mode_requires_https() -> None:
    with pytest.raises(UnsafeWebhookURL, match="https"):
        parse_and_check_url("http://93.184.216.34/hook", livemode=True, allow_local=False)
    parsed = parse_and_check_url("https://93.184.216.34/hook", livemode=True, allow_local=False)
    assert (parsed.scheme, parsed.host, parsed.port) == ("https", "93.184.216.34", 443)


def test_public_ip_literals_pass_the_pure_check() -> None:
    parsed = parse_and_check_url("http://93.184.216.34/x?y=1", livemode=False, allow_local=False)
    assert parsed.ip == ipaddress.IPv4Address("93.184.216.34")
    assert parsed.port == 80
    v6 = parse_and_check_url("https://[2606:4700::1111]:8443/", livemode=True, allow_local=False)
    assert (v6.host, v6.port) == ("2606:4700::1111", 8443)


def test_host_names_are_lower_cased_and_ports_kept() -> None:
    parsed = parse_and_check_url(
        "https://Hooks.Example.COM:8443/a/b?c=d", livemode=True, allow_local=False
    )
    assert (parsed.host, parsed.port, parsed.ip) == ("hooks.example.com", 8443, None)


async def test_ip_literals_are_vetted_without_any_network_io(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the check must not touch the network")

    async def no_resolver(host: str, port: int) -> list[IPAddress]:
        raise AssertionError("an IP literal needs no resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    vetted = await check_url(
        "https://93.184.216.34/hook", livemode=True, allow_local=False, resolver=no_resolver
    )
    assert vetted.addresses == (ipaddress.IPv4Address("93.184.216.34"),)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("168.63.129.16", "Azure"),
        ("169.254.10.10", "link-local"),
        ("fe80::abcd", "link-local"),
        ("10.1.2.3", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("fc00::1", "private"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.251", "multicast"),
        ("ff05::2", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("0.1.2.3", "this network"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("2001:db8::5", "documentation"),
        ("198.19.255.1", "benchmarking"),
        ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, a loopback"),
        ("::ffff:192.168.0.1", "IPv4-mapped form of 192.168.0.1, a private"),
        ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1"),
        ("2002:c0a8:1::", "6to4 form of 192.168.0.1"),
        ("::7f00:1", "IPv4-compatible"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("4000::1", "outside IPv6 global unicast"),
        ("fe80::1%eth0", "zone index"),
    ],
)
def test_is_forbidden_ip_reasons(address: str, reason: str) -> None:
    found = is_forbidden_ip(ipaddress.ip_address(address), allow_loopback=False)
    assert found is not None
    assert reason in found


def test_allow_loopback_admits_only_127_8_and_ipv6_loopback() -> None:
    for address in ("127.0.0.1", "127.255.0.9", "::1"):
        assert is_forbidden_ip(ipaddress.ip_address(address), allow_loopback=True) is None
    for address in (
        "169.254.169.254",
        "fd00:ec2::254",
        "10.0.0.1",
        "192.168.1.1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "fe80::1",
    ):
        assert is_forbidden_ip(ipaddress.ip_address(address), allow_loopback=True) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "::ffff:93.184.216.34"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_forbidden_ip(ipaddress.ip_address(address), allow_loopback=False) is None


# --- resolution ----------------------------------------------------------------------------------


def fixed(*answer: str) -> ssrf.Resolver:
    async def resolver(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address(a) for a in answer]

    return resolver


async def test_localhost_resolves_to_loopback_and_is_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeWebhookURL, match="loopback"):
        await resolve_and_vet("localhost", 80, allow_loopback=False)
    addresses = await resolve_and_vet("localhost", 80, allow_loopback=True)
    assert addresses
    assert all(a.is_loopback for a in addresses)


async def test_localhost_url_through_the_real_resolver() -> None:
    with pytest.raises(UnsafeWebhookURL):
        await check_url("http://localhost:9/", livemode=False, allow_local=False)
    vetted = await check_url("http://localhost:9/", livemode=False, allow_local=True)
    assert all(a.is_loopback for a in vetted.addresses)


async def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    with pytest.raises(UnsafeWebhookURL, match=r"resolves to 10\.0\.0\.7, a private address"):
        await check_url(
            "https://hooks.example.com/",
            livemode=True,
            allow_local=False,
            resolver=fixed("10.0.0.7"),
        )


async def test_a_name_resolving_to_loopback_is_refused_even_when_not_called_localhost() -> None:
    with pytest.raises(UnsafeWebhookURL, match="loopback"):
        await check_url(
            "http://innocent.example/",
            livemode=False,
            allow_local=False,
            resolver=fixed("127.0.0.1"),
        )
    vetted = await check_url(
        "http://innocent.example/", livemode=False, allow_local=True, resolver=fixed("127.0.0.1")
    )
    assert vetted.addresses == (ipaddress.IPv4Address("127.0.0.1"),)


async def test_any_forbidden_answer_refuses_the_whole_name() -> None:
    with pytest.raises(UnsafeWebhookURL, match=r"169\.254\.169\.254"):
        await resolve_and_vet(
            "mixed.example",
            443,
            allow_loopback=True,
            resolver=fixed("93.184.216.34", "169.254.169.254"),
        )


async def test_public_answers_are_returned_deduplicated_in_order() -> None:
    addresses = await resolve_and_vet(
        "hooks.example",
        443,
        allow_loopback=False,
        resolver=fixed("93.184.216.34", "2606:4700::1111", "93.184.216.34"),
    )
    assert [str(a) for a in addresses] == ["93.184.216.34", "2606:4700::1111"]


async def test_resolution_failures_are_unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nxdomain(host: str, port: int) -> list[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def slow(host: str, port: int) -> list[IPAddress]:
        await asyncio.sleep(10)
        return []

    with pytest.raises(UnresolvableWebhookHost, match="does not resolve"):
        await resolve_and_vet("nx.example", 80, allow_loopback=False, resolver=nxdomain)
    with pytest.raises(UnresolvableWebhookHost, match="no address"):
        await resolve_and_vet("empty.example", 80, allow_loopback=False, resolver=fixed())
    monkeypatch.setattr(ssrf, "DNS_TIMEOUT_S", 0.05)
    with pytest.raises(UnresolvableWebhookHost, match="did not resolve within"):
        await resolve_and_vet("slow.example", 80, allow_loopback=False, resolver=slow)


async def test_resolve_and_vet_refuses_numeric_forms_passed_directly() -> None:
    with pytest.raises(UnsafeWebhookURL):
        await resolve_and_vet("2130706433", 80, allow_loopback=True, resolver=fixed("1.1.1.1"))
    with pytest.raises(UnsafeWebhookURL):
        await resolve_and_vet("[::ffff:127.0.0.1]", 80, allow_loopback=True)
