"""The SSRF guard: which webhook URLs OpenPSE may POST to.

A merchant chooses the URL, so the URL is attacker-controlled input aimed at our network. Two
checks, both run when an endpoint is created and again before every delivery (CONTRACT §5):

1. ``parse_and_check_url`` -- pure, no I/O. Scheme (``https`` in live mode), no user info, no
   fragment, printable ASCII only (IDN hosts are given in punycode), a well-formed host. A host
   that *looks* numeric (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) is parsed the
   way ``inet_aton``/browsers do and refused unless it is the canonical dotted quad: resolvers,
   proxies and HTTP clients disagree about such forms, so none of them is ever sent.
2. ``resolve_and_vet`` -- resolves the host and refuses if *any* address is forbidden
   (``is_forbidden_ip``). The sender then connects only to the addresses vetted here, so a DNS
   answer that changes between the check and the connection (rebinding) cannot redirect it.

Loopback (127.0.0.0/8, ::1 and ``localhost`` names) is allowed only for sandbox endpoints on a
server started with ``OPENPSE_ALLOW_LOCAL_WEBHOOKS=1`` (``allow_local``); link-local and cloud
metadata addresses are refused in every mode. Refusal messages name the URL's host and the
address it resolved to, never anything a receiver sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from openpse.domain.errors import InvalidRequest

__all__ = [
    "DNS_TIMEOUT_S",
    "MAX_URL_LENGTH_CHARS",
    "IPAddress",
    "ParsedURL",
    "Resolver",
    "UnresolvableWebhookHost",
    "UnsafeWebhookURL",
    "VettedURL",
    "check_url",
    "is_forbidden_ip",
    "parse_and_check_url",
    "resolve_and_vet",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""Resolves ``(host, port)`` to addresses; raises ``OSError`` when the name does not resolve."""

MAX_URL_LENGTH_CHARS = 2048
MAX_HOSTNAME_LENGTH_CHARS = 253
DNS_TIMEOUT_S = 5.0
# More answers than this for one name is not a webhook receiver; refusing bounds the vetting work.
MAX_RESOLVED_ADDRESSES = 64
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_LOCAL_HINT = "loopback is allowed only in sandbox, with OPENPSE_ALLOW_LOCAL_WEBHOOKS=1"


class UnsafeWebhookURL(InvalidRequest):
    """A webhook URL OpenPSE will not deliver to; the message says why (400)."""

    code = "invalid_webhook_url"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="url")


class UnresolvableWebhookHost(UnsafeWebhookURL):
    """The URL's host did not resolve (or not in time). At send time this is retryable."""


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A webhook URL that passed the pure checks."""

    url: str
    scheme: str
    host: str
    """Lower-cased; an IPv6 literal without brackets; a trailing dot kept as given."""
    port: int
    """The effective port (80/443 when the URL names none)."""
    ip: IPAddress | None
    """The address when the host is an IP literal, else ``None``."""


@dataclass(frozen=True, slots=True)
class VettedURL:
    """A URL plus every address its host resolved to, all of them allowed."""

    parsed: ParsedURL
    addresses: tuple[IPAddress, ...]


# --- addresses -----------------------------------------------------------------------------------

_Table = tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]


def _table(*rows: tuple[str, str]) -> _Table:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in rows)


_METADATA = "a cloud metadata address"
# Refused in every mode, whatever allow_loopback says; checked first so the reason is precise.
_ALWAYS = _table(
    ("169.254.169.254/32", _METADATA),  # AWS, GCP, Azure, OCI, DigitalOcean, ...
    ("100.100.100.200/32", _METADATA),  # Alibaba Cloud
    ("168.63.129.16/32", "a cloud platform address (Azure WireServer)"),
    ("fd00:ec2::254/128", _METADATA),  # AWS over IPv6
    ("169.254.0.0/16", "a link-local address"),
    ("fe80::/10", "a link-local address"),
)
_LOOPBACK = _table(("127.0.0.0/8", "a loopback address"), ("::1/128", "a loopback address"))
_FORBIDDEN = _table(
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", "a 'this network' address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "a reserved (IETF protocol assignment) address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a reserved (6to4 relay anycast) address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "the unspecified address"),
    ("::/96", "a deprecated IPv4-compatible address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/32", "a Teredo tunnel address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001::/23", "a reserved (IETF protocol assignment) address"),
    ("3fff::/20", "a documentation address"),
    ("fc00::/7", "a private (unique local) address"),
    ("fec0::/10", "a site-local (deprecated private) address"),
    ("ff00::/8", "a multicast address"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def _lookup(ip: IPAddress, table: _Table) -> str | None:
    for net, reason in table:
        if ip.version == net.version and ip in net:
            return reason
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries and reaches (mapped, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "an IPv4-mapped form of"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "a NAT64 form of"
    if ip.sixtofour is not None:
        return ip.sixtofour, "a 6to4 form of"
    return None


def is_forbidden_ip(ip: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why OpenPSE must not connect to ``ip`` (e.g. ``"a private address"``), or ``None``.

    ``allow_loopback`` admits 127.0.0.0/8 and ::1 and nothing else. IPv6 forms that carry an
    IPv4 address (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged
    by the IPv4 address inside, with loopback never allowed that way. IPv6 outside global
    unicast (2000::/3) is refused.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return "an address with a zone index"
    reason = _lookup(ip, _ALWAYS)
    if reason is not None:
        return reason
    reason = _lookup(ip, _LOOPBACK)
    if reason is not None:
        return None if allow_loopback else reason
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            v4, form = embedded
            inner = is_forbidden_ip(v4, allow_loopback=False)
            return None if inner is None else f"{form} {v4}, {inner}"
    reason = _lookup(ip, _FORBIDDEN)
    if reason is not None:
        return reason
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "a reserved address (outside IPv6 global unicast 2000::/3)"
    return None


# --- numeric host names (the WHATWG URL "IPv4 parser", which matches inet_aton) ------------------

_DIGITS = {8: frozenset("01234567"), 10: frozenset("0123456789"), 16: frozenset("0123456789abcdef")}


def _ipv4_number(part: str) -> int | None:
    if not part:
        return None
    base = 10
    if part.startswith("0x"):
        base, part = 16, part[2:]
    elif len(part) > 1 and part.startswith("0"):
        base, part = 8, part[1:]
    if not part:
        return 0
    # Checked by hand: int() would also accept "_", "+", "-" and whitespace.
    if not set(part) <= _DIGITS[base]:
        return None
    return int(part, base)


def _numeric_parts(host: str) -> list[str]:
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return parts


def _ends_in_number(host: str) -> bool:
    last = _numeric_parts(host)[-1]
    return bool(last) and (last.isdigit() or _ipv4_number(last) is not None)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = _numeric_parts(host)
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    total = values[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(values[:-1]))
    return ipaddress.IPv4Address(total)


# --- the pure URL check --------------------------------------------------------------------------


def _refuse_ip(host: str, ip: IPAddress, *, allow_loopback: bool) -> None:
    reason = is_forbidden_ip(ip, allow_loopback=allow_loopback)
    if reason is None:
        return
    shown = host if host == str(ip) else f"{host} ({ip})"
    hint = f"; {_LOCAL_HINT}" if _lookup(ip, _LOOPBACK) else ""
    raise UnsafeWebhookURL(
        f"The webhook URL's host {shown} is {reason}; webhook endpoints must be publicly "
        f"reachable addresses{hint}."
    )


def _split_host_port(netloc: str) -> tuple[str, str | None, bool]:
    """``(host, port text or None, bracketed)``; raises ``UnsafeWebhookURL`` if malformed."""
    if netloc.startswith("["):
        host, sep, rest = netloc[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UnsafeWebhookURL("The webhook URL's IPv6 host is malformed; write [addr]:port.")
        return host, (rest[1:] if rest else None), True
    host, sep, port = netloc.partition(":")
    if ":" in port:
        raise UnsafeWebhookURL("The webhook URL's host is malformed; put IPv6 hosts in [].")
    return host, (port if sep else None), False


def _port(port_text: str | None, scheme: str) -> int:
    if port_text is None:
        return _DEFAULT_PORTS[scheme]
    if not (port_text.isdigit() and len(port_text) <= 5 and 0 < int(port_text) <= 65535):
        raise UnsafeWebhookURL("The webhook URL's port must be a number from 1 to 65535.")
    return int(port_text)


def _check_hostname(host: str, *, allow_loopback: bool) -> None:
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > MAX_HOSTNAME_LENGTH_CHARS or not all(_LABEL.fullmatch(x) for x in labels):
        raise UnsafeWebhookURL(
            f"The webhook URL's host {host!r} is not a valid host name "
            "(letters, digits, '-' and '.'; international names in punycode)."
        )
    if labels[-1] == "localhost" and not allow_loopback:
        raise UnsafeWebhookURL(
            f"The webhook URL's host {host} names the loopback interface; webhook endpoints "
            f"must be publicly reachable; {_LOCAL_HINT}."
        )


def parse_and_check_url(url: str, *, livemode: bool, allow_local: bool) -> ParsedURL:
    """Parse ``url`` and refuse it if it is unsafe on its face; no network I/O.

    Raises ``UnsafeWebhookURL``. ``allow_local`` (sandbox with OPENPSE_ALLOW_LOCAL_WEBHOOKS=1)
    admits loopback hosts; it has no effect in live mode, which also requires ``https``.
    """
    allow_loopback = allow_local and not livemode
    if len(url) > MAX_URL_LENGTH_CHARS:
        raise UnsafeWebhookURL(f"The webhook URL is longer than {MAX_URL_LENGTH_CHARS} characters.")
    if not all("!" <= c <= "~" for c in url) or "\\" in url:
        raise UnsafeWebhookURL(
            "The webhook URL may contain only printable ASCII without spaces or backslashes; "
            "percent-encode anything else."
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsafeWebhookURL("The webhook URL is malformed.") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeWebhookURL("The webhook URL must start with https:// (or http:// in sandbox).")
    if livemode and scheme != "https":
        raise UnsafeWebhookURL("A live-mode webhook URL must use https://.")
    if "#" in url:
        raise UnsafeWebhookURL("The webhook URL must not contain a fragment (#...).")
    if "@" in parts.netloc:
        raise UnsafeWebhookURL("The webhook URL must not contain a user name or password.")
    raw_host, port_text, bracketed = _split_host_port(parts.netloc)
    host = raw_host.lower()
    if not host:
        raise UnsafeWebhookURL("The webhook URL has no host.")
    port = _port(port_text, scheme)
    ip: IPAddress | None = None
    if bracketed:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeWebhookURL(
                f"The webhook URL's host [{host}] is not an IPv6 address."
            ) from None
        if ip.scope_id:
            raise UnsafeWebhookURL("The webhook URL's IPv6 host must not carry a zone index.")
    elif _ends_in_number(host):
        ip = _parse_ipv4(host)
        if ip is None:
            raise UnsafeWebhookURL(f"The webhook URL's host {host} is not a valid IPv4 address.")
        if host != str(ip):
            raise UnsafeWebhookURL(
                f"The webhook URL's host {host} is a non-canonical way to write {ip}; "
                "write IPv4 addresses as four decimal numbers, or use a host name."
            )
    else:
        _check_hostname(host, allow_loopback=allow_loopback)
    if ip is not None:
        _refuse_ip(host, ip, allow_loopback=allow_loopback)
    return ParsedURL(url=url, scheme=scheme, host=host, port=port, ip=ip)


# --- resolution ----------------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The operating system's resolver (``getaddrinfo``), TCP answers only."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            # A link-local answer may carry "%zone"; the address alone decides its fate.
            found.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return found


async def resolve_and_vet(
    host: str, port: int, *, allow_loopback: bool, resolver: Resolver | None = None
) -> list[IPAddress]:
    """Every address ``host`` resolves to, if none is forbidden; raises ``UnsafeWebhookURL``.

    IP literals are vetted without a lookup. A failed or slow (``DNS_TIMEOUT_S``) lookup raises
    ``UnresolvableWebhookHost``. The answer is de-duplicated and keeps the resolver's order.
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        _refuse_ip(host, literal, allow_loopback=allow_loopback)
        return [literal]
    if _ends_in_number(host):
        raise UnsafeWebhookURL(f"The webhook URL's host {host} is not a canonical IPv4 address.")
    try:
        async with asyncio.timeout(DNS_TIMEOUT_S):
            answer = await (resolver or system_resolver)(host, port)
    except TimeoutError:
        raise UnresolvableWebhookHost(
            f"The webhook URL's host {host} did not resolve within {DNS_TIMEOUT_S:g} s."
        ) from None
    except OSError:
        raise UnresolvableWebhookHost(
            f"The webhook URL's host {host} does not resolve; check the name and its DNS records."
        ) from None
    addresses = list(dict.fromkeys(answer))
    if not addresses:
        raise UnresolvableWebhookHost(f"The webhook URL's host {host} has no address.")
    if len(addresses) > MAX_RESOLVED_ADDRESSES:
        raise UnsafeWebhookURL(f"The webhook URL's host {host} resolves to too many addresses.")
    for address in addresses:
        reason = is_forbidden_ip(address, allow_loopback=allow_loopback)
        if reason is not None:
            hint = f"; {_LOCAL_HINT}" if _lookup(address, _LOOPBACK) else ""
            raise UnsafeWebhookURL(
                f"The webhook URL's host {host} resolves to {address}, {reason}; webhook "
                f"endpoints must resolve only to publicly reachable addresses{hint}."
            )
    return addresses


async def check_url(
    url: str, *, livemode: bool, allow_local: bool, resolver: Resolver | None = None
) -> VettedURL:
    """``parse_and_check_url`` then ``resolve_and_vet``: at endpoint creation and before a send."""
    parsed = parse_and_check_url(url, livemode=livemode, allow_local=allow_local)
    if parsed.ip is not None:
        return VettedURL(parsed=parsed, addresses=(parsed.ip,))
    addresses = await resolve_and_vet(
        parsed.host,
        parsed.port,
        allow_loopback=allow_local and not livemode,
        resolver=resolver,
    )
    return VettedURL(parsed=parsed, addresses=tuple(addresses))
