"""One delivery attempt against real local receivers over real sockets (RELIABILITY 21-24).

The receivers are plain asyncio servers on 127.0.0.1 writing raw HTTP/1.1, so each can misbehave
exactly: drip a byte a second, stream without end, never answer. Loopback is allowed explicitly
(``allow_local=True``); without it the sender must refuse before any connection is made.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import ipaddress
import random
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook

from openpse.webhooks.schedule import (
    ENDPOINT_DISABLE_AFTER_S,
    JITTER_FRACTION,
    MAX_ATTEMPTS,
    RETRY_AFTER_CAP_S,
    RETRY_DELAYS_S,
    endpoint_should_be_disabled,
    next_delay_s,
)
from openpse.webhooks.sender import (
    _PIN,
    DELIVERY_TIMEOUT_S,
    RESPONSE_EXCERPT_CAP_BYTES,
    RESPONSE_READ_CAP_BYTES,
    AttemptResult,
    WebhookSender,
    _Pin,
    _pinned_socket,
    _PinnedResolver,
    parse_retry_after,
)
from openpse.webhooks.signing import generate_secret, headers_for
from openpse.webhooks.ssrf import IPAddress, Resolver
from tests.support.servers import free_port

TIMEOUT_S = 1.5
BODY = b'{"id":"evt_test","object":"event","type":"payment.succeeded"}'

# --- a misbehaving receiver ----------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int = 0
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


Writer = asyncio.StreamWriter


def head(status: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def simple(writer: Writer, status: str, body: bytes = b"", *headers: str) -> None:
    writer.write(head(status, *headers, length=len(body)) + body)
    await writer.drain()


async def simple_raw(writer: Writer, raw: bytes) -> None:
    writer.write(raw)
    await writer.drain()


async def drip(writer: Writer) -> None:
    writer.write(head("200 OK", length=100))
    for _ in range(100):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(1.0)


async def endless(writer: Writer) -> None:
    writer.write(head("200 OK", length=10 * 1024**3))  # announces 10 GiB, sends until cut off
    chunk = b"y" * 65536
    for _ in range(200_000):
        writer.write(chunk)
        await writer.drain()


async def hang(writer: Writer) -> None:
    await asyncio.sleep(60)


async def reset(writer: Writer) -> None:
    """Takes the request, then resets the connection (RST) instead of answering."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.transport.abort()


def http_date(seconds_from_now: int) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


ROUTES: dict[str, Callable[[Writer], Awaitable[None]]] = {
    "/ok": lambda w: simple(w, "200 OK", b"thanks"),
    "/204": lambda w: simple(w, "204 No Content"),
    "/500": lambda w: simple(w, "500 Internal Server Error", b"boom", "Retry-After: 30"),
    "/500-long": lambda w: simple(w, "500 Internal Server Error", b"\xff" + b"e" * 5000),
    "/410": lambda w: simple(w, "410 Gone", b"gone"),
    "/429": lambda w: simple(w, "429 Too Many Requests", b"slow down", "Retry-After: 7"),
    "/503": lambda w: simple(w, "503 Service Unavailable", b"", f"Retry-After: {http_date(120)}"),
    "/cookie": lambda w: simple(w, "200 OK", b"", "Set-Cookie: session=abc; Path=/"),
    "/drip": drip,
    "/huge": endless,
    "/hang": hang,
    "/hangup": lambda w: w.drain(),  # reads the request, closes without a word
    "/reset": reset,
    "/garbage": lambda w: simple_raw(w, b"NOT HTTP AT ALL\r\n\r\n"),
    "/short": lambda w: simple_raw(w, head("200 OK", length=100) + b"only ten b"),
    "/long-header": lambda w: simple(w, "200 OK", b"", "X-Long: " + "h" * 12_000),
    "/huge-header": lambda w: simple(w, "200 OK", b"", "X-Long: " + "h" * 20_000),
}


async def handle(receiver: Receiver, reader: asyncio.StreamReader, writer: Writer) -> None:
    task = asyncio.current_task()
    assert task is not None
    receiver.tasks.add(task)
    receiver.connections += 1
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = raw.decode("latin-1").split("\r\n")
        path = request_line.split(" ")[1]
        headers = dict(
            (k.strip().lower(), v.strip()) for k, v in (x.split(":", 1) for x in lines if x)
        )
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        receiver.requests.append(Seen(path, headers, body))
        route = ROUTES.get(path) or ROUTES["/ok"]
        if path.startswith("/302"):
            location = path.removeprefix("/302?to=")
            await simple(writer, "302 Found", b"moved", f"Location: {location}")
        else:
            await route(writer)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@dataclass
class Running:
    receiver: Receiver
    server: asyncio.Server


async def start(ssl_context: ssl.SSLContext | None = None) -> Running:
    receiver = Receiver()
    server = await asyncio.start_server(
        lambda r, w: handle(receiver, r, w), "127.0.0.1", 0, ssl=ssl_context
    )
    receiver.port = server.sockets[0].getsockname()[1]
    return Running(receiver, server)


async def stop(running: Running) -> None:
    running.server.close()
    for task in running.receiver.tasks:
        task.cancel()
    await asyncio.gather(*running.receiver.tasks, return_exceptions=True)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await start()
    yield running.receiver
    await stop(running)


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    async with WebhookSender(timeout_s=TIMEOUT_S) as s:
        yield s


def fake_dns(table: dict[str, list[str]]) -> Resolver:
    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


async def post(sender: WebhookSender, url: str, *, allow_local: bool = True) -> AttemptResult:
    headers = headers_for([generate_secret()], "evt_test", int(time.time()), BODY)
    return await sender.send(url, BODY, headers, livemode=False, allow_local=allow_local)


# --- outcomes ------------------------------------------------------------------------------------


async def test_2xx_is_success_and_the_delivery_verifies(
    receiver: Receiver, sender: WebhookSender
) -> None:
    secret = generate_secret()
    headers = headers_for([secret], "evt_test", int(time.time()), BODY)
    result = await sender.send(receiver.url("/ok"), BODY, headers, livemode=False, allow_local=True)
    assert result == AttemptResult(
        ok=True,
        status_code=200,
        latency_ms=result.latency_ms,
        error=None,
        response_excerpt="thanks",
        retry_after_s=None,
        gone=False,
    )
    seen = receiver.requests[-1]
    assert seen.body == BODY
    assert seen.headers["user-agent"] == "OpenPSE-Webhooks/1"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["accept-encoding"] == "identity"
    assert "cookie" not in seen.headers
    Webhook(secret).verify(seen.body, seen.headers)
    assert (await post(sender, receiver.url("/204"))).ok


async def test_500_is_a_failure_and_its_retry_after_is_ignored(
    receiver: Receiver, sender: WebhookSender
) -> None:
    result = await post(sender, receiver.url("/500"))
    assert (result.ok, result.status_code, result.error) == (False, 500, "http_500")
    assert result.response_excerpt == "boom"
    assert result.retry_after_s is None
    assert not result.gone


async def test_the_excerpt_is_capped_and_decoded_with_replacement(
    receiver: Receiver, sender: WebhookSender
) -> None:
    result = await post(sender, receiver.url("/500-long"))
    assert len(result.response_excerpt.encode("utf-8")) <= RESPONSE_EXCERPT_CAP_BYTES + 2
    assert result.response_excerpt.startswith("\ufffdeee")


async def test_410_means_gone(receiver: Receiver, sender: WebhookSender) -> None:
    result = await post(sender, receiver.url("/410"))
    assert (result.ok, result.status_code, result.error, result.gone) == (
        False,
        410,
        "http_410",
        True,
    )


async def test_429_retry_after_seconds(receiver: Receiver, sender: WebhookSender) -> None:
    result = await post(sender, receiver.url("/429"))
    assert (result.ok, result.status_code, result.error) == (False, 429, "http_429")
    assert result.retry_after_s == 7


async def test_503_retry_after_http_date(receiver: Receiver, sender: WebhookSender) -> None:
    result = await post(sender, receiver.url("/503"))
    assert (result.status_code, result.error) == (503, "http_503")
    assert result.retry_after_s is not None
    assert 115 <= result.retry_after_s <= 121


async def test_302_is_a_failure_and_is_never_followed(
    receiver: Receiver, sender: WebhookSender
) -> None:
    target = await start()
    try:
        for location in (target.receiver.url("/landing"), "http://169.254.169.254/latest"):
            result = await post(sender, receiver.url(f"/302?to={location}"))
            assert (result.ok, result.status_code, result.error) == (
                False,
                302,
                "redirect_not_followed",
            )
        assert target.receiver.connections == 0
    finally:
        await stop(target)


async def test_a_dripping_receiver_is_cut_off_by_the_total_deadline(
    receiver: Receiver, sender: WebhookSender
) -> None:
    started = time.monotonic()
    result = await post(sender, receiver.url("/drip"))
    elapsed_s = time.monotonic() - started
    assert (result.ok, result.status_code, result.error) == (False, 200, "timeout")
    assert result.response_excerpt.startswith("x")
    assert TIMEOUT_S - 0.1 <= elapsed_s < TIMEOUT_S + 0.5


async def test_a_receiver_that_never_answers_times_out(
    receiver: Receiver, sender: WebhookSender
) -> None:
    result = await post(sender, receiver.url("/hang"))
    assert (result.ok, result.status_code, result.error) == (False, None, "timeout")
    assert TIMEOUT_S * 1000 - 100 <= result.latency_ms < TIMEOUT_S * 1000 + 500


async def test_an_endless_body_is_cut_off_by_the_read_cap(
    receiver: Receiver, sender: WebhookSender
) -> None:
    # Reading the announced 10 GiB would take far longer than the deadline: only the cap lets
    # this attempt finish, successfully, well inside it.
    result = await post(sender, receiver.url("/huge"))
    assert (result.ok, result.status_code, result.error) == (True, 200, None)
    assert result.response_excerpt == "y" * RESPONSE_EXCERPT_CAP_BYTES
    assert result.latency_ms < TIMEOUT_S * 1000 / 2


async def _keep_alive_server(big_first: bool) -> tuple[asyncio.Server, list[int], list[str]]:
    """A receiver that keeps connections open (HTTP/1.1 keep-alive). Notes each connection and
    each request line; with ``big_first`` its first answer's body is larger than the read cap
    (and the rest of it arrives only after the sender stopped reading)."""
    connections: list[int] = []
    lines: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: Writer) -> None:
        connections.append(1)
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines.append(raw.split(b"\r\n", 1)[0].decode())
                length = next(int(x.split(b":", 1)[1]) for x in raw.split(b"\r\n")
                              if x.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                body = b"z" * (3 * RESPONSE_READ_CAP_BYTES) if big_first and len(lines) == 1 \
                    else b"ok"
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                             .encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, connections, lines


async def test_a_kept_alive_connection_carries_the_next_deliveries(sender: WebhookSender) -> None:
    server, connections, lines = await _keep_alive_server(big_first=False)
    port = server.sockets[0].getsockname()[1]
    try:
        results = [await post(sender, f"http://127.0.0.1:{port}/hook") for _ in range(5)]
    finally:
        server.close()
    assert [r.ok for r in results] == [True] * 5
    assert (len(lines), len(connections)) == (5, 1)


async def test_a_connection_whose_answer_was_cut_at_the_cap_is_never_reused(
    sender: WebhookSender,
) -> None:
    """Bytes of a body left unread must never be taken for the next delivery's answer."""
    server, connections, lines = await _keep_alive_server(big_first=True)
    port = server.sockets[0].getsockname()[1]
    try:
        first = await post(sender, f"http://127.0.0.1:{port}/hook")
        second = await post(sender, f"http://127.0.0.1:{port}/hook")
    finally:
        server.close()
    assert first.ok and first.response_excerpt == "z" * RESPONSE_EXCERPT_CAP_BYTES
    assert (second.ok, second.response_excerpt) == (True, "ok")
    assert (len(lines), len(connections)) == (2, 2)


async def test_slow_receivers_do_not_hold_up_other_deliveries(
    receiver: Receiver, sender: WebhookSender
) -> None:
    drip_result, hang_result, huge_result, ok_result = await asyncio.gather(
        post(sender, receiver.url("/drip")),
        post(sender, receiver.url("/hang")),
        post(sender, receiver.url("/huge")),
        post(sender, receiver.url("/ok")),
    )
    assert drip_result.error == hang_result.error == "timeout"
    assert huge_result.ok and ok_result.ok
    assert ok_result.latency_ms < 500


async def test_connection_refused_is_a_connect_error(sender: WebhookSender) -> None:
    result = await post(sender, f"http://127.0.0.1:{free_port()}/")
    assert (result.ok, result.status_code, result.error) == (False, None, "connect_error")


@pytest.mark.parametrize("path", ["/hangup", "/garbage", "/short", "/huge-header"])
async def test_a_broken_answer_is_a_protocol_error(
    receiver: Receiver, sender: WebhookSender, path: str
) -> None:
    """No answer, not HTTP, a body shorter than announced, a header past 16 KiB: each is a
    failure named ``protocol_error``, never a success nor an exception."""
    result = await post(sender, receiver.url(path))
    assert (result.ok, result.error) == (False, "protocol_error")
    assert len(receiver.requests) == 1


async def test_a_connection_reset_instead_of_an_answer_is_a_network_error(
    receiver: Receiver, sender: WebhookSender
) -> None:
    """The request arrives, then the connection is reset (a crashed receiver, a middlebox):
    a failure named ``network_error``, retried like any other, never an exception."""
    result = await post(sender, receiver.url("/reset"))
    assert (result.ok, result.status_code, result.error) == (False, None, "network_error")
    assert len(receiver.requests) == 1


async def test_a_long_header_within_the_limit_is_accepted(
    receiver: Receiver, sender: WebhookSender
) -> None:
    result = await post(sender, receiver.url("/long-header"))
    assert (result.ok, result.status_code, result.error) == (True, 200, None)


async def test_cookies_from_a_receiver_are_never_sent_back(
    receiver: Receiver, sender: WebhookSender
) -> None:
    assert (await post(sender, receiver.url("/cookie"))).ok
    assert (await post(sender, receiver.url("/ok"))).ok
    assert "cookie" not in receiver.requests[-1].headers


# --- the SSRF guard at send time -----------------------------------------------------------------


async def test_loopback_is_refused_without_allow_local_and_nothing_connects(
    receiver: Receiver, sender: WebhookSender
) -> None:
    for url in (receiver.url("/ok"), receiver.url("/ok", host="localhost")):
        result = await post(sender, url, allow_local=False)
        assert not result.ok
        assert result.status_code is None
        assert result.error is not None and result.error.startswith("unsafe_url: ")
        assert "loopback" in result.error
    headers = headers_for([generate_secret()], "evt_test", int(time.time()), BODY)
    live = await sender.send(
        receiver.url("/ok", scheme="https"), BODY, headers, livemode=True, allow_local=True
    )
    assert live.error is not None and live.error.startswith("unsafe_url: ")
    assert receiver.connections == 0


async def test_the_connection_goes_to_the_vetted_address_only(receiver: Receiver) -> None:
    # "pinned.test" exists only in the fake DNS: success proves the HTTP client did not resolve
    # the name again, and the Host header still carries the name.
    calls: list[int] = []
    answers = {"pinned.test": ["127.0.0.1"]}

    async def rebinding(host: str, port: int) -> Sequence[IPAddress]:
        calls.append(port)
        result = await fake_dns(answers)(host, port)
        answers["pinned.test"] = ["10.0.0.1"]  # the next answer points inward
        return result

    async with WebhookSender(timeout_s=TIMEOUT_S, resolver=rebinding) as sender:
        first = await post(sender, receiver.url("/ok", host="pinned.test"))
        assert first.ok
        assert receiver.requests[-1].headers["host"] == f"pinned.test:{receiver.port}"
        second = await post(sender, receiver.url("/ok", host="pinned.test"))
    assert second.error is not None and second.error.startswith("unsafe_url: ")
    assert "10.0.0.1" in second.error
    assert receiver.connections == 1
    assert len(calls) == 2


async def test_every_vetted_address_is_tried_in_turn(receiver: Receiver) -> None:
    resolver = fake_dns({"multi.test": ["::1", "127.0.0.1"]})  # nothing listens on ::1
    async with WebhookSender(timeout_s=TIMEOUT_S, resolver=resolver) as sender:
        result = await post(sender, receiver.url("/ok", host="multi.test"))
    assert result.ok


async def test_names_resolving_inward_or_nowhere_are_refused_before_connecting(
    receiver: Receiver,
) -> None:
    resolver = fake_dns({"inward.test": ["192.168.1.1"], "meta.test": ["169.254.169.254"]})
    async with WebhookSender(timeout_s=TIMEOUT_S, resolver=resolver) as sender:
        inward = await post(sender, receiver.url("/ok", host="inward.test"))
        meta = await post(sender, receiver.url("/ok", host="meta.test"))
        missing = await post(sender, receiver.url("/ok", host="missing.test"))
    assert inward.error is not None and "a private address" in inward.error
    assert meta.error is not None and "cloud metadata" in meta.error
    assert missing.error is not None and missing.error.startswith("dns_error: ")
    assert receiver.connections == 0


async def test_the_client_refuses_connections_nobody_vetted(receiver: Receiver) -> None:
    """Outside ``send`` (no pin) the client neither resolves a name nor opens a socket, not
    even to an IP literal (which aiohttp never hands its resolver)."""
    with pytest.raises(OSError, match="no vetted address"):
        await _PinnedResolver().resolve("hooks.test", receiver.port)
    with pytest.raises(OSError, match="no vetted address"):
        _pinned_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ("127.0.0.1", receiver.port)))
    token = _PIN.set(_Pin("127.0.0.1", receiver.port, (ipaddress.ip_address("127.0.0.1"),)))
    try:  # pinned, but not to this address, this port, or anything that parses
        for address, port in (("127.0.0.2", receiver.port), ("127.0.0.1", receiver.port + 1),
                              ("fe80::1%nowhere", receiver.port), ("nonsense", receiver.port)):
            with pytest.raises(OSError, match="no vetted address"):
                _pinned_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", (address, port)))
        _pinned_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "",
                        ("127.0.0.1", receiver.port))).close()
    finally:
        _PIN.reset(token)
    async with WebhookSender(timeout_s=TIMEOUT_S) as sender:
        session = sender._session(True)
        for url in (receiver.url("/ok"), receiver.url("/ok", host="localhost")):
            with pytest.raises(aiohttp.ClientConnectorError) as caught:
                await session.post(url, data=BODY)
            assert "no vetted address" in repr(caught.value.__cause__)
    assert receiver.connections == 0


# --- https: pinned connect, SNI and certificate checked for the URL's name -----------------------


@dataclass
class Pki:
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_pki(tmp: Path, name: str) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OpenPSE test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "leaf.pem", tmp / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Pki(server=server, client=client)


async def test_https_to_a_plain_http_receiver_is_a_tls_error(sender: WebhookSender) -> None:
    """A handshake that fails outright (plain HTTP where TLS was expected, no certificate to
    verify): a named failure, never an exception out of ``send``."""

    async def plain(reader: asyncio.StreamReader, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await post(sender, f"https://127.0.0.1:{port}/hook")
    finally:
        server.close()
    assert (result.ok, result.status_code) == (False, None)
    assert result.error is not None and result.error.startswith("tls_error: "), result.error


async def test_https_keeps_sni_and_certificate_checks_for_the_url_name(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "hooks.test")
    sni: list[str | None] = []

    def record_sni(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)

    pki.server.sni_callback = record_sni
    running = await start(pki.server)
    tls_receiver = running.receiver
    resolver = fake_dns({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    try:
        async with WebhookSender(
            timeout_s=TIMEOUT_S, resolver=resolver, ssl_context=pki.client
        ) as sender:
            good = await post(sender, tls_receiver.url("/ok", host="hooks.test", scheme="https"))
            wrong_name = await post(
                sender, tls_receiver.url("/ok", host="other.test", scheme="https")
            )
            by_ip = await post(sender, tls_receiver.url("/ok", scheme="https"))
    finally:
        await stop(running)
    assert good.ok, good.error
    assert sni == ["hooks.test", "other.test", None]  # an IP literal sends no SNI
    assert tls_receiver.requests[0].headers["host"] == f"hooks.test:{tls_receiver.port}"
    for failed in (wrong_name, by_ip):
        assert not failed.ok
        assert failed.error is not None and failed.error.startswith("tls_error: ")
        assert "mismatch" in failed.error
    assert len(tls_receiver.requests) == 1


# --- the retry schedule and Retry-After parsing (pure) -------------------------------------------


def test_the_schedule_follows_the_contract_then_gives_up() -> None:
    rng = random.Random(7)
    assert RETRY_DELAYS_S == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert MAX_ATTEMPTS == 10
    for attempt, base in enumerate(RETRY_DELAYS_S, start=1):
        for _ in range(200):
            delay = next_delay_s(attempt, retry_after_s=None, rng=rng)
            assert delay is not None
            assert base * (1 - JITTER_FRACTION) - 1 <= delay <= base * (1 + JITTER_FRACTION) + 1
    assert next_delay_s(MAX_ATTEMPTS, retry_after_s=None, rng=rng) is None
    assert next_delay_s(MAX_ATTEMPTS, retry_after_s=5, rng=rng) is None
    with pytest.raises(ValueError):
        next_delay_s(0, retry_after_s=None, rng=rng)


def test_jitter_spreads_and_stays_bounded_even_with_a_bad_rng() -> None:
    delays = {next_delay_s(4, retry_after_s=None, rng=random.Random(s)) for s in range(50)}
    assert len(delays) > 10

    class Wild:
        def uniform(self, a: float, b: float) -> float:
            return 100.0

    assert next_delay_s(2, retry_after_s=None, rng=Wild()) == 330


def test_retry_after_lengthens_but_never_shortens_and_is_capped() -> None:
    rng = random.Random(1)
    assert next_delay_s(1, retry_after_s=7, rng=rng) == 7
    delay = next_delay_s(3, retry_after_s=0, rng=rng)
    assert delay is not None and delay >= 1800 * (1 - JITTER_FRACTION) - 1
    assert next_delay_s(1, retry_after_s=10**9, rng=rng) == RETRY_AFTER_CAP_S


def test_endpoint_is_disabled_after_five_days_of_failure() -> None:
    assert ENDPOINT_DISABLE_AFTER_S == 5 * 86400
    assert not endpoint_should_be_disabled(None, now_s=1e9)
    assert not endpoint_should_be_disabled(1e9, now_s=1e9 + ENDPOINT_DISABLE_AFTER_S - 1)
    assert endpoint_should_be_disabled(1e9, now_s=1e9 + ENDPOINT_DISABLE_AFTER_S)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7),
        (" 120 ", 120),
        ("0", 0),
        ("99999999999999999999", RETRY_AFTER_CAP_S),
        ("Thu, 01 Jan 1970 00:02:00 GMT", 60),
        ("Thu, 01 Jan 1970 00:00:30 GMT", 0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: int | None) -> None:
    assert parse_retry_after(value, now_s=60) == expected


def test_default_timeout_is_the_contracts_fifteen_seconds() -> None:
    assert DELIVERY_TIMEOUT_S == 15.0
    with pytest.raises(ValueError):
        WebhookSender(timeout_s=DELIVERY_TIMEOUT_S + 1)
