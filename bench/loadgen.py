"""A load generator for signed HTTP/1.1 APIs: closed loop or open loop, in its own processes.

    from bench.loadgen import Auth, Workload, run_load
    result = run_load("http://127.0.0.1:8000", Workload("create_payment", Auth.pse(key, secret)),
                      mode="closed", concurrency=32, duration_s=20)

Why it is built this way (the machine has 2 cores; the generator shares them with the server):

- **Raw asyncio HTTP/1.1** (an ``asyncio.Protocol`` per keep-alive connection on uvloop), not
  httpx: a request is one ``bytes`` written and one response parsed from the head's
  ``Content-Length`` (or chunks). It costs a fraction of httpx's CPU per request; the figure is
  measured on every run (``gen_cpu_us_per_req``: the generator processes' own user+system CPU
  over the measured phase, divided by the requests they sent).
- **Every request signed for real** (CONTRACT §2: HMAC-SHA256 over method, path, canonical
  query, timestamp, nonce and the body's SHA-256), with a fresh nonce and, on every POST, a
  fresh ``Idempotency-Key``. The server takes no shortcut.
- **Separate processes** (``processes``, default 2, spawned): each runs its share of the
  concurrency or of the arrival rate on its own event loop. A barrier lines them up after the
  warm-up, so the caller samples the server's CPU exactly around the measured phase.
- **Closed loop** (``mode="closed"``): ``concurrency`` connections, each sending its next
  request as soon as the previous one answered. Latency = answer - send.
- **Open loop** (``mode="open"``): requests are scheduled at fixed intervals (``rate`` per
  second over all processes) whatever the answers; latency is measured from the *scheduled* time,
  so a slow server is charged for the queue it causes (no coordinated omission). A request is
  *late* when it left more than ``LATE_AFTER_S`` after its slot (no free connection, or the
  generator itself behind), and *dropped* when ``max_in_flight`` requests are already waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import multiprocessing as mp
import os
import queue
import re
import resource
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, cast
from urllib.parse import urlsplit

# The server's own signing rules (CONTRACT §2); re-exported for the prototype.
from openpse.domain.signing import canonical_query, string_to_sign

__all__ = [
    "Auth",
    "LoadResult",
    "Workload",
    "canonical_query",
    "percentile",
    "run_load",
    "string_to_sign",
]

LATE_AFTER_S: Final = 0.010
CONNECT_TIMEOUT_S: Final = 10.0
GRACE_S: Final = 30.0  # in-flight requests get this long after the phase before they count as lost
BARRIER_TIMEOUT_S: Final = 120.0
RESULT_TIMEOUT_S: Final = 600.0
DEFAULT_PROCESSES: Final = 2
MAX_ERROR_SAMPLES: Final = 5


# --- what to send --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Auth:
    """``pse``: the four signed headers; ``bearer``: ``Authorization: Bearer <secret>``;
    ``none``: nothing (``/healthz``)."""

    kind: str = "none"
    key: str = ""
    secret: str = ""

    @classmethod
    def pse(cls, key: str, secret: str) -> Auth:
        return cls("pse", key, secret)

    @classmethod
    def bearer(cls, secret: str) -> Auth:
        return cls("bearer", "", secret)


@dataclass(frozen=True)
class Workload:
    """One kind of request, built from its index ``i`` by the builder named ``name``.

    ``ids`` feeds the builders that address existing objects (``ids[i % len(ids)]``);
    ``collect_ids`` returns the ``id`` of every 2xx answer whose id starts with ``id_prefix``.
    """

    name: str
    auth: Auth = Auth()
    expect: tuple[int, ...] = (200,)
    ids: tuple[str, ...] = ()
    collect_ids: bool = False
    id_prefix: str = ""
    params: tuple[tuple[str, str], ...] = ()


Request = tuple[str, str, str, bytes, str]  # method, path, raw query, body, content type
Builder = Callable[[int], Request]

_CARD = ('"payment_method":{"type":"card","card":{"number":"4242424242424242",'
         '"exp_month":12,"exp_year":2034,"cvc":"123"}}')


def _builder(w: Workload, tag: str) -> Builder:
    """A closure that builds request ``i``; ``tag`` keeps order ids unique across runs."""
    ids = w.ids
    params = dict(w.params)
    json_ct = "application/json"
    form_ct = "application/x-www-form-urlencoded"
    if w.name == "healthz":
        return lambda i: ("GET", "/healthz", "", b"", "")
    if w.name == "create_payment":
        def create(i: int) -> Request:
            body = (f'{{"amount":{1000 + i % 500},"currency":"JPY",'
                    f'"merchant_order_id":"{tag}-{i}",{_CARD},"confirm":true}}').encode()
            return ("POST", "/v1/payments", "", body, json_ct)
        return create
    if w.name == "get_payment":
        return lambda i: ("GET", "/v1/payments/" + ids[i % len(ids)], "", b"", "")
    if w.name == "list_payments":
        query = params.get("query", "limit=10")
        return lambda i: ("GET", "/v1/payments", query, b"", "")
    if w.name == "refund":
        def refund(i: int) -> Request:
            body = f'{{"payment":"{ids[i % len(ids)]}","amount":1}}'.encode()
            return ("POST", "/v1/refunds", "", body, json_ct)
        return refund
    if w.name == "checkout_session":
        def session(i: int) -> Request:
            body = (f'{{"amount":{1000 + i % 500},"currency":"JPY",'
                    f'"merchant_order_id":"{tag}-cs-{i}","payment_method_types":["card"],'
                    '"success_url":"https://shop.example/ok",'
                    '"cancel_url":"https://shop.example/cancel"}').encode()
            return ("POST", "/v1/checkout/sessions", "", body, json_ct)
        return session
    if w.name == "stripe_create_confirm":
        def pi(i: int) -> Request:
            body = (f"amount={1000 + i % 500}&currency=jpy&payment_method=pm_card_visa"
                    "&confirm=true").encode()
            return ("POST", "/v1/payment_intents", "", body, form_ct)
        return pi
    if w.name == "stripe_refund":
        def stripe_refund(i: int) -> Request:
            body = f"payment_intent={ids[i % len(ids)]}&amount=1".encode()
            return ("POST", "/v1/refunds", "", body, form_ct)
        return stripe_refund
    if w.name == "stripe_get":
        return lambda i: ("GET", "/v1/payment_intents/" + ids[i % len(ids)], "", b"", "")
    raise ValueError(f"unknown workload {w.name!r}")


class _Renderer:
    """Turns a built request into the bytes on the wire, signed."""

    def __init__(self, w: Workload, host: str) -> None:
        self.auth = w.auth
        self.secret = w.auth.secret.encode()
        self.host = host
        self.prefix = secrets.token_hex(6)  # 12 chars; nonces are prefix + 12 hex digits
        self.seq = 0

    def render(self, req: Request) -> bytes:
        method, path, query, body, ctype = req
        self.seq += 1
        head = [f"{method} {path}?{query} HTTP/1.1" if query else f"{method} {path} HTTP/1.1",
                "Host: " + self.host]
        kind = self.auth.kind
        if kind == "pse":
            ts = str(int(time.time()))
            nonce = f"{self.prefix}{self.seq:012x}"
            sts = string_to_sign(method, path, query, ts, nonce, body)
            sig = hmac.new(self.secret, sts.encode(), hashlib.sha256).hexdigest()
            head += ["X-PSE-Access-Key: " + self.auth.key, "X-PSE-Timestamp: " + ts,
                     "X-PSE-Nonce: " + nonce, "X-PSE-Signature: " + sig]
            if method == "POST":
                head.append(f"Idempotency-Key: bench-{nonce}")
        elif kind == "bearer":
            head.append("Authorization: Bearer " + self.auth.secret)
        if body or method == "POST":
            head += [f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- the HTTP/1.1 connection ---------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.head_len = -1
        self.status = 0
        self.length = -1  # -1: until close; -2: chunked
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.head_len >= 0 and self.length == -1:
                waiter.set_result((self.status, bytes(self.buf[self.head_len:])))
            else:
                waiter.set_exception(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        buf = self.buf
        if self.head_len < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_len = end + 4
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                self.length = int(head[at + 17:stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.length = -2
            self.keep_alive = b"\r\nconnection: close" not in head
        if self.length >= 0:
            end = self.head_len + self.length
            if len(buf) < end:
                return
            body = bytes(buf[self.head_len:end])
            del buf[:end]
        elif self.length == -2:
            parsed = _dechunk(buf, self.head_len)
            if parsed is None:
                return
            body, end = parsed
            del buf[:end]
        else:
            return  # until close
        status = self.status
        if not self.keep_alive:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._reset()
        waiter.set_result((status, body))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """The body of a complete chunked message at ``start`` and where it ends, or None."""
    out = bytearray()
    at = start
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return None
        size = int(bytes(buf[at:eol]).split(b";")[0], 16)
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", eol)
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 4
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2:eol + 2 + size]
        at = eol + 2 + size + 2


async def _connect(host: str, port: int) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(_Conn, host, port),
                                     CONNECT_TIMEOUT_S)
    return conn


class _Pool:
    """Idle keep-alive connections for the open loop; opens more up to ``limit``."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[_Conn] = []
        self.count = 0
        self.waiters: list[asyncio.Future[_Conn]] = []

    async def acquire(self) -> _Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.count -= 1
        if self.count < self.limit:
            self.count += 1
            try:
                return await _connect(self.host, self.port)
            except BaseException:
                self.count -= 1
                raise
        fut: asyncio.Future[_Conn] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return await fut

    def release(self, conn: _Conn | None) -> None:
        if conn is None or conn.closed:
            self.count -= 1
            if self.waiters and self.count < self.limit:
                # a waiter may now open its own connection
                fut = self.waiters.pop(0)
                self.count += 1
                task = asyncio.ensure_future(_connect(self.host, self.port))
                task.add_done_callback(lambda t: _hand_over(t, fut, self))
            return
        while self.waiters:
            fut = self.waiters.pop(0)
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)


def _hand_over(task: asyncio.Task[_Conn], fut: asyncio.Future[_Conn], pool: _Pool) -> None:
    if task.exception() is not None:
        pool.count -= 1
        if not fut.done():
            fut.set_exception(task.exception() or ConnectionError())
    elif not fut.done():
        fut.set_result(task.result())
    else:
        pool.release(task.result())


# --- one generator process -----------------------------------------------------------------------


@dataclass
class _Plan:
    base_url: str
    workload: Workload
    mode: str
    concurrency: int  # this process's connections (closed) or connection cap (open)
    rate: float  # this process's arrivals per second (open)
    offset_s: float  # this process's slot offset (open)
    duration_s: float
    requests: int  # this process's request quota; 0: run for duration_s
    warmup_s: float
    max_in_flight: int
    proc_index: int
    procs: int
    tag: str


@dataclass
class _Stats:
    lat: list[float] = field(default_factory=list)
    done_t: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    scheduled: int = 0
    dropped: int = 0
    late: int = 0
    lost: int = 0


class _Runner:
    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        parts = urlsplit(plan.base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.build = _builder(plan.workload, plan.tag)
        self.renderer = _Renderer(plan.workload, f"{self.host}:{self.port}")
        self.expect = frozenset(plan.workload.expect)
        prefix = plan.workload.id_prefix
        self.id_re = re.compile(rb'"id":\s*"(' + re.escape(prefix.encode()) + rb'[^"]*)"')
        self.stats = _Stats()
        self.recording = False
        self.t0 = 0.0
        self.next_i = plan.proc_index
        self.conns: list[_Conn] = []
        self.pool = _Pool(self.host, self.port, max(1, plan.concurrency))

    def take_index(self) -> int:
        i = self.next_i
        self.next_i += self.plan.procs
        return i

    def record(self, sent: float, done: float, status: int, body: bytes) -> None:
        if not self.recording:
            return
        st = self.stats
        st.lat.append(done - sent)
        st.done_t.append(done - self.t0)
        st.statuses[status] = st.statuses.get(status, 0) + 1
        if status not in self.expect:
            st.errors += 1
            if len(st.error_samples) < MAX_ERROR_SAMPLES:
                st.error_samples.append(f"{status} {body[:300]!r}")
        elif self.plan.workload.collect_ids:
            m = self.id_re.search(body)
            if m:
                st.ids.append(m.group(1).decode())

    async def exchange(self, conn: _Conn | None, i: int) -> tuple[_Conn | None, int, bytes]:
        data = self.renderer.render(self.build(i))
        try:
            if conn is None or conn.closed:
                conn = await _connect(self.host, self.port)
            status, body = await conn.request(data)
            return conn, status, body
        except Exception as exc:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return None, 0, repr(exc).encode()

    # closed loop
    async def closed_phase(self, until: float, quota: int) -> None:
        loop = asyncio.get_running_loop()
        issued = 0

        async def lane() -> None:
            nonlocal issued
            conn: _Conn | None = self.conns.pop() if self.conns else None
            while True:
                if quota and issued >= quota:
                    break
                if not quota and loop.time() >= until:
                    break
                issued += 1
                i = self.take_index()
                sent = time.perf_counter()
                conn, status, body = await self.exchange(conn, i)
                self.record(sent, time.perf_counter(), status, body)
            if conn is not None and not conn.closed:
                self.conns.append(conn)

        lanes = [loop.create_task(lane()) for _ in range(self.plan.concurrency)]
        budget = (self.plan.duration_s if not quota else RESULT_TIMEOUT_S) + GRACE_S
        _done, pending = await asyncio.wait(lanes, timeout=budget)
        for task in pending:
            task.cancel()
        if self.recording:
            self.stats.lost += len(pending)
            self.stats.errors += len(pending)

    # open loop
    async def open_phase(self, duration_s: float, quota: int) -> None:
        loop = asyncio.get_running_loop()
        plan = self.plan
        interval = 1.0 / plan.rate
        start = time.perf_counter() + plan.offset_s
        in_flight: set[asyncio.Task[None]] = set()
        k = 0
        while True:
            slot = start + k * interval
            if quota and k >= quota:
                break
            if not quota and slot >= start + duration_s:
                break
            k += 1
            now = time.perf_counter()
            if slot > now:
                await asyncio.sleep(slot - now)
            if self.recording:
                self.stats.scheduled += 1
            if len(in_flight) >= plan.max_in_flight:
                if self.recording:
                    self.stats.dropped += 1
                continue
            task = loop.create_task(self.fire(slot))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            _done, pending = await asyncio.wait(set(in_flight), timeout=GRACE_S)
            for task in pending:
                task.cancel()
            if self.recording:
                self.stats.lost += len(pending)
                self.stats.errors += len(pending)

    async def fire(self, slot: float) -> None:
        i = self.take_index()
        try:
            conn: _Conn | None = await self.pool.acquire()
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.record(slot, time.perf_counter(), 0, repr(exc).encode())
            return
        if self.recording and time.perf_counter() - slot > LATE_AFTER_S:
            self.stats.late += 1
        conn, status, body = await self.exchange(conn, i)
        self.pool.release(conn)
        self.record(slot, time.perf_counter(), status, body)

    async def run(self, ready: Any, go: Any) -> dict[str, Any]:
        plan = self.plan
        loop = asyncio.get_running_loop()
        if plan.warmup_s > 0:
            if plan.mode == "closed":
                await self.closed_phase(loop.time() + plan.warmup_s, 0)
            else:
                await self.open_phase(plan.warmup_s, 0)
        # nothing is in flight here; block the loop until every process has warmed up
        ready.put(self.plan.proc_index)
        if not go.wait(BARRIER_TIMEOUT_S):
            raise RuntimeError("no go signal after the warm-up")
        self.recording = True
        cpu0 = _cpu_s()
        self.t0 = time.perf_counter()
        if plan.mode == "closed":
            await self.closed_phase(loop.time() + plan.duration_s, plan.requests)
        else:
            await self.open_phase(plan.duration_s, plan.requests)
        elapsed = time.perf_counter() - self.t0
        cpu = _cpu_s() - cpu0
        self.recording = False
        for conn in self.conns + self.pool.idle:
            if conn.transport is not None:
                conn.transport.close()
        st = self.stats
        return {"lat": st.lat, "done_t": st.done_t, "statuses": st.statuses,
                "errors": st.errors, "lost": st.lost,
                "error_samples": st.error_samples, "ids": st.ids, "scheduled": st.scheduled,
                "dropped": st.dropped, "late": st.late, "cpu_s": cpu, "elapsed_s": elapsed}


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _process_main(plan: _Plan, ready: Any, go: Any, out: Any) -> None:
    run: Any = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    try:
        result = run(_Runner(plan).run(ready, go))
    except BaseException as exc:
        out.put({"crash": repr(exc)})
        ready.put(-1)
        raise
    out.put(result)


# --- the caller's side ---------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass
class LoadResult:
    mode: str
    requests: int
    errors: int
    elapsed_s: float
    throughput_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    error_samples: list[str]
    gen_processes: int
    gen_cpu_s: float
    gen_cpu_us_per_req: float
    concurrency: int = 0
    target_rate_per_s: float = 0.0
    scheduled: int = 0
    dropped: int = 0
    late: int = 0
    rate_start_per_s: float = 0.0
    rate_end_per_s: float = 0.0
    server_cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    ids: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # sorted; to merge phases

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("ids")
        data.pop("latencies_s")
        return data


def _window_rates(done_t: list[float], elapsed: float) -> tuple[float, float]:
    """Completions per second over the first and the last fifth of the measured phase."""
    if elapsed <= 0 or not done_t:
        return 0.0, 0.0
    span = elapsed / 5
    first = sum(1 for t in done_t if t <= span)
    last = sum(1 for t in done_t if t > elapsed - span)
    return first / span, last / span


def run_load(base_url: str, workload: Workload, *, mode: str = "closed", concurrency: int = 32,
             rate: float = 0.0, duration_s: float = 10.0, requests: int = 0,
             warmup_s: float = 2.0, processes: int = DEFAULT_PROCESSES,
             max_in_flight: int = 2000,
             on_start: Callable[[], Any] | None = None,
             on_stop: Callable[[], Any] | None = None) -> LoadResult:
    """Run one measured phase; ``on_start``/``on_stop`` run in this process right at its edges
    (after the warm-up barrier, and once every generator has reported) and their results go to
    the caller through closures, e.g. to sample the server's CPU."""
    if mode not in ("closed", "open"):
        raise ValueError("mode is closed or open")
    if mode == "open" and rate <= 0:
        raise ValueError("the open loop needs a rate > 0")
    processes = max(1, min(processes, concurrency if mode == "closed" else processes))
    ctx = _context()
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    tag = secrets.token_hex(4)
    procs = []
    for p in range(processes):
        conc = concurrency // processes + (1 if p < concurrency % processes else 0)
        plan = _Plan(base_url=base_url, workload=workload, mode=mode, concurrency=max(1, conc),
                     rate=rate / processes, offset_s=p / rate if rate else 0.0,
                     duration_s=duration_s,
                     requests=requests // processes + (1 if p < requests % processes else 0)
                     if requests else 0,
                     warmup_s=warmup_s, max_in_flight=max(1, max_in_flight // processes),
                     proc_index=p, procs=processes, tag=f"{tag}{p}")
        proc = ctx.Process(target=_process_main, args=(plan, ready, go, out),
                           daemon=True)
        proc.start()
        procs.append(proc)
    try:
        _await_all(ready, procs, BARRIER_TIMEOUT_S, "warm up")
        if on_start is not None:
            on_start()
        go.set()
        results = _await_all(out, procs, RESULT_TIMEOUT_S + duration_s, "report")
        if on_stop is not None:
            on_stop()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return _merge(results, mode=mode, concurrency=concurrency, rate=rate, processes=processes)


def _context() -> Any:
    """A forkserver (started once, with this module and uvloop imported) makes each generator
    process in milliseconds instead of a fresh interpreter's few hundred; spawn elsewhere."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.loadgen", "uvloop"])
    return ctx


def _await_all(q: Any, procs: list[Any], timeout_s: float, what: str) -> list[Any]:
    """One message from each process, failing fast when one dies or reports a crash."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < len(procs):
        try:
            item = q.get(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise RuntimeError(f"load generator processes did not {what} in time") from None
            if any(not p.is_alive() for p in procs) and q.empty():
                dead = [p.exitcode for p in procs if not p.is_alive()]
                if len(dead) > len(got) or any(code for code in dead):
                    raise RuntimeError(f"a load generator process died (exit {dead})") from None
            continue
        if item == -1 or (isinstance(item, dict) and "crash" in item):
            raise RuntimeError(f"load generator failed: {item}")
        got.append(item)
    return got


def latency_ms(lat: list[float]) -> tuple[float, float, float, float]:
    """p50, p95, p99 and max in ms of sorted latencies in seconds."""
    return (percentile(lat, 0.50) * 1000, percentile(lat, 0.95) * 1000,
            percentile(lat, 0.99) * 1000, lat[-1] * 1000 if lat else 0.0)


def added_statuses(parts: Iterable[Mapping[Any, int]]) -> dict[str, int]:
    """Responses per status code, added up over several counts."""
    statuses: dict[str, int] = {}
    for part in parts:
        for code, n in part.items():
            statuses[str(code)] = statuses.get(str(code), 0) + n
    return statuses


def _merge(results: list[dict[str, Any]], *, mode: str, concurrency: int, rate: float,
           processes: int) -> LoadResult:
    lat = sorted(x for r in results for x in r["lat"])
    done_t = [x for r in results for x in r["done_t"]]
    elapsed = max((r["elapsed_s"] for r in results), default=0.0)
    statuses = added_statuses(r["statuses"] for r in results)
    gen_cpu = sum(r["cpu_s"] for r in results)
    n = len(lat)
    p50, p95, p99, top = latency_ms(lat)
    start_rate, end_rate = _window_rates(done_t, elapsed)
    return LoadResult(
        mode=mode, requests=n, errors=sum(r["errors"] for r in results),
        elapsed_s=elapsed, throughput_per_s=n / elapsed if elapsed > 0 else 0.0,
        p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=top, statuses=statuses,
        error_samples=[s for r in results for s in r["error_samples"]][:MAX_ERROR_SAMPLES],
        gen_processes=processes, gen_cpu_s=gen_cpu,
        gen_cpu_us_per_req=gen_cpu / n * 1e6 if n else 0.0,
        concurrency=concurrency if mode == "closed" else 0,
        target_rate_per_s=rate if mode == "open" else 0.0,
        scheduled=sum(r["scheduled"] for r in results),
        dropped=sum(r["dropped"] for r in results), late=sum(r["late"] for r in results),
        rate_start_per_s=start_rate, rate_end_per_s=end_rate,
        ids=[i for r in results for i in r["ids"]],
        latencies_s=lat,
    )


if __name__ == "__main__":  # a quick look: python -m bench.loadgen URL [concurrency] [seconds]
    import json
    import sys

    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    res = run_load(url, Workload("healthz"), concurrency=int(sys.argv[2]) if len(sys.argv) > 2
                   else 32, duration_s=float(sys.argv[3]) if len(sys.argv) > 3 else 5.0,
                   warmup_s=1.0)
    print(json.dumps(res.summary()))
    os._exit(0)
