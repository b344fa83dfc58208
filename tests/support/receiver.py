"""A webhook receiver for tests and the benchmark: a raw HTTP/1.1 server on 127.0.0.1 that runs
in a thread of its own (its own event loop), so it keeps answering while a test blocks on a
synchronous client or a subprocess delivers to it.

Each path can misbehave on purpose. A *behaviour* gets the request and how many requests with
the same ``webhook-id`` came before it, and answers through a ``Reply``: status, headers, body,
a delay before answering, a byte-a-second drip, or never answering.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from standardwebhooks import Webhook

__all__ = ["Received", "Receiver", "Reply", "verify_all"]

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at_s: float

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    drip: bool = False
    hang: bool = False


Behaviour = Callable[[Received, int], Reply]

_REASONS = {200: "OK", 204: "No Content", 302: "Found", 410: "Gone", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Receiver:
    """``with Receiver() as r: ...``; ``r.url("/path")``; ``r.on("/path", behaviour)``."""

    default: Behaviour = field(default=lambda _req, _n: Reply())
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    routes: dict[str, Behaviour] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, behaviour: Behaviour) -> None:
        self.routes[path] = behaviour

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def ids(self, path: str) -> list[str]:
        return [r.webhook_id for r in self.at(path)]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise self._not_met(timeout_s)

    async def wait_for_async(self, predicate: Callable[[], bool], timeout_s: float = 20.0
                             ) -> None:
        """``wait_for`` from a coroutine: the caller's event loop keeps running meanwhile, so
        a send still in flight on it (a delivery runner that stopped waiting for it) can
        finish. The blocking ``wait_for`` would freeze that send until the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise self._not_met(timeout_s)

    def _not_met(self, timeout_s: float) -> AssertionError:
        return AssertionError(f"receiver: condition not met in {timeout_s} s; "
                              f"{len(self.requests)} requests so far")

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=1024))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # --- HTTP --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read(reader)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                    key = (request.path, request.webhook_id)
                    seen = self._seen.get(key, 0)
                    self._seen[key] = seen + 1
                behaviour = self.routes.get(request.path, self.default)
                if not await self._answer(writer, behaviour(request, seen)):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Received | None:
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
        if not head:
            return None
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = min(int(headers.get("content-length", "0")), MAX_BODY_BYTES)
        body = await reader.readexactly(length) if length else b""
        return Received(path, headers, body, time.time())

    async def _answer(self, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        body = b"x" * 100 if reply.drip else reply.body
        head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in reply.headers)]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if reply.drip:
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
            return False
        writer.write(body)
        await writer.drain()
        return True


def verify_all(requests: list[Received], *secrets: str) -> list[dict[str, object]]:
    """Every request verifies with the ``standardwebhooks`` reference verifier under each of
    ``secrets``; returns the parsed bodies."""
    bodies = []
    for req in requests:
        for secret in secrets:
            bodies.append(Webhook(secret).verify(req.body, req.headers))
    return bodies
