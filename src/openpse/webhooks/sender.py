"""One webhook delivery attempt over HTTP, bounded in time and in bytes read.

``WebhookSender.send`` vets the URL again at send time (``ssrf.check_url``: the endpoint's DNS
may have changed since it was created), then POSTs with the connection *pinned* to the vetted
addresses: the transport's network backend connects only to an address vetted for this very
request and refuses anything else, so the HTTP client never resolves the name a second time and
a rebinding DNS answer cannot slip through. The URL, and so the ``Host`` header, TLS SNI and
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
import http.cookiejar
import math
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

import httpcore
import httpx

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
MAX_KEEPALIVE_CONNECTIONS = 20
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


# Set by WebhookSender.send around its request. httpcore opens a new connection in the task that
# sends the request, so the backend sees the pin of exactly the request it connects for.
_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("webhook_pin", default=None)


class _NotPinned(httpcore.ConnectError):
    """The HTTP client asked for a connection nobody vetted; refused (fail closed)."""


def _same_host(a: str, b: str) -> bool:
    return a.strip("[]").lower() == b.strip("[]").lower()


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the addresses vetted for the current request's host and port."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.port != port or not _same_host(pin.host, host):
            raise _NotPinned(f"no vetted address for {host}:{port}")
        failure: Exception | None = None
        for address in pin.addresses[:MAX_CONNECT_ADDRESSES]:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None, "a vetted URL has at least one address"
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _NotPinned("webhooks never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool that uses ``_PinnedBackend``."""

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits, retries=0)
        # httpx offers no way to hand its pool a network backend, so the pool it built is
        # replaced by an equal one with ours (nothing has used the first one yet).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_PinnedBackend(),
        )


# --- errors --------------------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < _CAUSE_CHAIN_LIMIT:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _classify(exc: httpx.HTTPError) -> str:
    chain = _causes(exc)
    if any(isinstance(c, _NotPinned) for c in chain):
        return "unsafe_url: the connection was not to a vetted address"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    tls = next((c for c in chain if isinstance(c, ssl.SSLError)), None)
    if tls is not None:
        detail = getattr(tls, "verify_message", None) or tls.reason or "handshake failed"
        return f"tls_error: {detail}"[:_ERROR_DETAIL_CAP_CHARS]
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    if isinstance(exc, httpx.ProtocolError):
        return "protocol_error"
    if isinstance(exc, httpx.NetworkError):
        return "network_error"
    return "http_error"


# --- the sender ----------------------------------------------------------------------------------


def _new_client(
    ssl_context: ssl.SSLContext, timeout_s: float, max_connections: int
) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=min(MAX_KEEPALIVE_CONNECTIONS, max_connections),
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    # A policy with no allowed domain: no receiver's cookie is ever kept or sent on.
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        transport=_PinnedTransport(ssl_context=ssl_context, limits=limits),
        follow_redirects=False,
        trust_env=False,
        cookies=no_cookies,
        timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
    )


class WebhookSender:
    """Sends delivery attempts over pooled connections. ``close()`` when done.

    ``timeout_s`` bounds each whole attempt. ``resolver`` and ``ssl_context`` exist for tests
    (a fake DNS, a private CA); production uses the system resolver and the certifi CAs.

    Sends that may reach loopback (sandbox with ``allow_local``) get a client, and so a pool, of
    their own: a kept-alive connection vetted under the looser rule can then never carry a
    delivery that was vetted under the strict one.
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
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._clients = {
            allow_loopback: _new_client(context, timeout_s, max_connections)
            for allow_loopback in (False, True)
        }

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
        except httpx.HTTPError as exc:
            progress.error = _classify(exc)
        except httpx.InvalidURL:
            progress.error = "unsafe_url: the HTTP client could not parse the URL"
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
        client = self._clients[allow_local and not livemode]
        token = _PIN.set(_Pin(parsed.host, parsed.port, vetted.addresses))
        try:
            async with client.stream("POST", url, content=body, headers=headers) as response:
                progress.status_code = response.status_code
                if response.status_code in (429, 503):
                    progress.retry_after_s = parse_retry_after(response.headers.get("retry-after"))
                # Raw bytes, never decoded: the cap then bounds memory as well as time. Kept in
                # ``progress`` as they arrive, so a timeout still reports what came.
                async for chunk in response.aiter_raw():
                    progress.body += chunk[: RESPONSE_READ_CAP_BYTES - len(progress.body)]
                    if len(progress.body) >= RESPONSE_READ_CAP_BYTES:
                        break
                progress.complete = True
        finally:
            _PIN.reset(token)

    async def close(self) -> None:
        """Close pooled connections."""
        for client in self._clients.values():
            await client.aclose()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
