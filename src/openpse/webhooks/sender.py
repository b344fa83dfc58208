"""One webhook delivery attempt over HTTP, bounded in time and in bytes read.

``WebhookSender.send`` vets the URL again at send time (``ssrf.check_url``: the endpoint's DNS
may have changed since it was created), then POSTs with the connection *pinned* to the vetted
addresses: aiohttp's resolver and socket factory (``_PinnedResolver``, ``_pinned_socket``)
answer with and connect to only an address vetted for this very request and refuse anything
else, so the HTTP client never resolves the name a second time and a rebinding DNS answer
cannot slip through. The URL, and so the ``Host`` header, TLS SNI and
certificate verification, keep the original host name; only the TCP connect is pinned, for
``http`` and ``https`` alike.

Limits: the whole attempt (resolution, connect, request, response headers and the capped body)
has ``timeout_s`` (``DELIVERY_TIMEOUT_S``, 15 s); at most ``RESPONSE_READ_CAP_BYTES`` of the body
are read, so a receiver that drips bytes or sends gigabytes cannot hold a worker. Redirects are
never followed, environment proxies are ignored, cookies are never stored, responses are not
decompressed (``accept-encoding: identity``), so no compression bomb either.

``send`` never raises for anything the receiver or the network does: every outcome is an
``AttemptResult``.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import ipaddress
import math
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
import aiohttp.abc
import certifi
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import ResolveResult

from openpse.webhooks.schedule import RETRY_AFTER_CAP_S
from openpse.webhooks.signing import USER_AGENT
from openpse.webhooks.ssrf import (
    IPAddress,
    Resolver,
    UnresolvableWebhookHost,
    UnsafeWebhookURL,
    check_url,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DELIVERY_TIMEOUT_S",
    "RESPONSE_EXCERPT_CAP_BYTES",
    "RESPONSE_READ_CAP_BYTES",
    "AttemptResult",
    "WebhookSender",
    "parse_retry_after",
]

DELIVERY_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
RESPONSE_READ_CAP_BYTES = 64 * 1024
RESPONSE_EXCERPT_CAP_BYTES = 1024
MAX_CONNECTIONS = 100
# A response line or header field longer than this is a protocol_error (h11's limit, as before).
MAX_HEADER_LINE_BYTES = 16 * 1024
KEEPALIVE_EXPIRY_S = 30.0
# Addresses of one host tried in turn before the attempt is a connect_error.
MAX_CONNECT_ADDRESSES = 4
_ERROR_DETAIL_CAP_CHARS = 200
_CAUSE_CHAIN_LIMIT = 8


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt did; stored as a delivery-attempt row and shown to the merchant."""

    ok: bool
    """A 2xx arrived, with its body (up to the read cap), within the deadline."""
    status_code: int | None
    latency_ms: int
    """The whole attempt: resolution, connect, request and the capped response read."""
    error: str | None
    """``None`` when ok; else ``timeout``, ``connect_error``, ``tls_error: ...``,
    ``dns_error: ...``, ``unsafe_url: ...``, ``protocol_error``, ``network_error``,
    ``redirect_not_followed`` or ``http_<status>``."""
    response_excerpt: str
    """The first ``RESPONSE_EXCERPT_CAP_BYTES`` of the body, decoded with replacement."""
    retry_after_s: int | None
    """``Retry-After`` of a 429 or 503, in seconds from now, capped at 24 h."""
    gone: bool
    """The receiver answered 410: disable the endpoint."""


@dataclass(slots=True)
class _Progress:
    """What an attempt learned so far; survives a timeout that cuts the attempt short."""

    started_s: float = field(default_factory=time.monotonic)
    status_code: int | None = None
    body: bytearray = field(default_factory=bytearray)
    retry_after_s: int | None = None
    error: str | None = None
    complete: bool = False

    def result(self) -> AttemptResult:
        status = self.status_code
        ok = self.complete and self.error is None and status is not None and 200 <= status < 300
        error = self.error
        if error is None and not ok and status is not None:
            error = "redirect_not_followed" if 300 <= status < 400 else f"http_{status}"
        return AttemptResult(
            ok=ok,
            status_code=status,
            latency_ms=int((time.monotonic() - self.started_s) * 1000),
            error=error,
            response_excerpt=bytes(self.body[:RESPONSE_EXCERPT_CAP_BYTES]).decode(
                "utf-8", errors="replace"
            ),
            retry_after_s=self.retry_after_s,
            gone=status == 410,
        )


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> int | None:
    """``Retry-After`` as whole seconds from now (delta-seconds or HTTP-date), capped at 24 h."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(int(text[:12]), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    now = time.time() if now_s is None else now_s
    return min(max(0, math.ceil(when.timestamp() - now)), RETRY_AFTER_CAP_S)


# --- pinning -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


# Set by WebhookSender.send around its request. aiohttp opens a new connection in the task that
# sends the request, so the resolver and the socket factory see the pin of exactly the request
# they connect for.
_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("webhook_pin", default=None)


class _NotPinned(OSError):
    """The HTTP client asked for a connection nobody vetted; refused (fail closed). An
    ``OSError``, so aiohttp reports it as a connect failure whose cause is this."""


def _same_host(a: str, b: str) -> bool:
    return a.strip("[]").lower() == b.strip("[]").lower()


def _pin_for(host: str, port: int) -> _Pin:
    pin = _PIN.get()
    if pin is None or pin.port != port or not _same_host(pin.host, host):
        raise _NotPinned(f"no vetted address for {host}:{port}")
    return pin


class _PinnedResolver(aiohttp.abc.AbstractResolver):
    """Answers a host name with the addresses vetted for the current request, never the DNS:
    the HTTP client cannot resolve the name a second time (a rebinding answer cannot slip in).
    Tried in order, one after the other (no happy eyeballs), at most
    ``MAX_CONNECT_ADDRESSES``."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pin = _pin_for(host, port)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in pin.addresses[:MAX_CONNECT_ADDRESSES]
        ]

    async def close(self) -> None:
        return None


def _pinned_socket(addr_info: AddrInfoType) -> socket.socket:
    """Every TCP connect, IP-literal URLs included (aiohttp skips the resolver for those): the
    address must be one vetted for the current request, else no socket is made."""
    family, type_, proto, _, sockaddr = addr_info
    host, port = str(sockaddr[0]), int(sockaddr[1])
    pin = _PIN.get()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # never from a vetted address (a scoped one is link-local: refused)
        address = None
    if pin is None or pin.port != port or address not in pin.addresses:
        raise _NotPinned(f"no vetted address for {host}:{port}")
    return socket.socket(family=family, type=type_, proto=proto)


def _new_session(
    ssl_context: ssl.SSLContext, timeout_s: float, max_connections: int
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_EXPIRY_S,
        ssl=ssl_context,
        resolver=_PinnedResolver(),
        use_dns_cache=False,
        happy_eyeballs_delay=None,
        socket_factory=_pinned_socket,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Never stores a receiver's cookie, so none is ever sent on.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=min(CONNECT_TIMEOUT_S, timeout_s), sock_read=timeout_s
        ),
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
    )


# --- errors --------------------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < _CAUSE_CHAIN_LIMIT:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _classify(exc: aiohttp.ClientError) -> str:
    chain = _causes(exc)
    if any(isinstance(c, _NotPinned) for c in chain):
        return "unsafe_url: the connection was not to a vetted address"
    # aiohttp's own TLS errors are ssl.SSLError subclasses too; the detail is in the one they
    # wrap (raised ``from`` it).
    tls = next((c for c in chain
                if isinstance(c, ssl.SSLError) and not isinstance(c, aiohttp.ClientError)), None)
    if tls is not None or isinstance(exc, aiohttp.ClientSSLError):
        detail = tls and (getattr(tls, "verify_message", None) or tls.reason)
        return f"tls_error: {detail or 'handshake failed'}"[:_ERROR_DETAIL_CAP_CHARS]
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                  | aiohttp.ClientResponseError):
        return "protocol_error"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "network_error"
    return "http_error"


# --- the sender ----------------------------------------------------------------------------------


class WebhookSender:
    """Sends delivery attempts over pooled connections. ``close()`` when done.

    ``timeout_s`` bounds each whole attempt. ``resolver`` and ``ssl_context`` exist for tests
    (a fake DNS, a private CA); production uses the system resolver and the certifi CAs.

    Sends that may reach loopback (sandbox with ``allow_local``) get a session, and so a pool,
    of their own: a kept-alive connection vetted under the looser rule can then never carry a
    delivery that was vetted under the strict one. The HTTP client is aiohttp: on this
    machine it costs 0.09-0.17 ms of CPU per POST where httpx cost 0.59-1.30 ms (growing with
    the requests in flight; docs/performance.md, webhook deliveries).
    """

    def __init__(
        self,
        *,
        timeout_s: float = DELIVERY_TIMEOUT_S,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not 0 < timeout_s <= DELIVERY_TIMEOUT_S:
            raise ValueError(f"timeout_s must be in (0, {DELIVERY_TIMEOUT_S}]")
        self._timeout_s = timeout_s
        self._resolver = resolver
        self._ssl_context = ssl_context or ssl.create_default_context(cafile=certifi.where())
        self._max_connections = max_connections
        # Made on first use: a session belongs to the event loop it was made in.
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    def _session(self, allow_loopback: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(allow_loopback)
        if session is None:
            session = _new_session(self._ssl_context, self._timeout_s, self._max_connections)
            self._sessions[allow_loopback] = session
        return session

    async def send(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        livemode: bool,
        allow_local: bool,
    ) -> AttemptResult:
        """POST ``body`` to ``url`` once; never raises for receiver or network behaviour."""
        progress = _Progress()
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._attempt(url, body, headers, progress, livemode, allow_local)
        except TimeoutError:
            progress.error = "timeout"
        except UnresolvableWebhookHost as exc:
            progress.error = f"dns_error: {exc.message}"
        except UnsafeWebhookURL as exc:
            progress.error = f"unsafe_url: {exc.message}"
        except aiohttp.InvalidURL:
            progress.error = "unsafe_url: the HTTP client could not parse the URL"
        except aiohttp.ClientError as exc:
            progress.error = _classify(exc)
        return progress.result()

    async def _attempt(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        progress: _Progress,
        livemode: bool,
        allow_local: bool,
    ) -> None:
        vetted = await check_url(
            url, livemode=livemode, allow_local=allow_local, resolver=self._resolver
        )
        parsed = vetted.parsed
        session = self._session(allow_local and not livemode)
        token = _PIN.set(_Pin(parsed.host, parsed.port, vetted.addresses))
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                progress.status_code = response.status
                if response.status in (429, 503):
                    progress.retry_after_s = parse_retry_after(response.headers.get("retry-after"))
                # Raw bytes, never decoded: the cap then bounds memory as well as time. Kept in
                # ``progress`` as they arrive, so a timeout still reports what came.
                try:
                    async for chunk in response.content.iter_any():
                        progress.body += chunk[: RESPONSE_READ_CAP_BYTES - len(progress.body)]
                        if len(progress.body) >= RESPONSE_READ_CAP_BYTES:
                            response.close()  # the rest unread: never reused (nor by aiohttp)
                            break
                except BaseException:
                    response.close()  # cut short (the deadline): never reused
                    raise
                progress.complete = True
        finally:
            _PIN.reset(token)

    async def close(self) -> None:
        """Close pooled connections."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
