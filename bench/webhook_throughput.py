"""Webhook delivery throughput and enqueue-to-2xx latency against a local receiver.

    python bench/webhook_throughput.py --uvloop                           # embedded SQLite
    python bench/webhook_throughput.py --uvloop --workers 2 \
        --database-url postgresql://postgres@127.0.0.1:5432/test          # a fresh PG database

Each phase runs on a fresh database; the receiver is a separate process (a minimal HTTP/1.1
server that answers 200 and notes when each ``webhook-id`` first arrived); the delivery job is
``DeliveryRunner`` configured by ``build_runner``, exactly what ``openpse worker`` runs.

1. backlog: ``--events`` events are committed first (one transactional-outbox delivery each),
   then ``--workers`` worker processes drain them; deliveries/s = events / (last arrival - go).
2. steady: events are committed at ``--rate`` per second (in transactions of 10) while the job
   runs in-process; enqueue-to-2xx latency = receiver arrival - commit of the event's
   transaction (p50, p99, max).

``--uvloop`` runs the job on uvloop, as it runs inside ``openpse serve`` (uvicorn picks uvloop);
``openpse worker`` runs on the default asyncio loop. Prints one JSON line per phase, with the
CPU it cost: in the backlog phase the worker processes' own user+system CPU from go to done
(``cpu_s``, and per 1,000 deliveries) and the sum of their peak RSS (``VmHWM``); in the steady
phase this process's CPU over the phase (the emitter and the job share it) and its peak RSS.
``bench/run.py`` runs this script as one of its scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import queue
import resource
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
WORKER_POLL_S = 0.05
WORKER_READY_TIMEOUT_S = 120


# --- the receiver (its own process) --------------------------------------------------------------


def _receiver_main(port_out: Any) -> None:
    arrivals: dict[str, float] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1]
                length, msg_id = 0, ""
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        msg_id = value.strip().decode()
                if length:
                    await reader.readexactly(length)
                body = b"ok"
                if path == b"/stats":
                    body = json.dumps(arrivals).encode()
                elif path == b"/reset":
                    arrivals.clear()
                elif msg_id:
                    arrivals.setdefault(msg_id, time.time())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=2048)
        port_out.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def _receiver_get(port: int, path: str) -> Any:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30).json() if path == "/stats" \
        else httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)


# --- the database and the service side ----------------------------------------------------------


@asynccontextmanager
async def _fresh_services(database_url: str | None, tmp: Path) -> Any:
    from pydantic import SecretStr

    from openpse.bootstrap import build_services
    from openpse.config import Settings, to_async_url
    from openpse.storage import migrate

    drop = None
    if database_url is None:
        url = f"sqlite:///{tmp / ('bench-' + secrets.token_hex(4) + '.db')}"
    else:
        import asyncpg

        name = "openpse_bench_" + secrets.token_hex(4)
        admin = await asyncpg.connect(database_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url = f"{database_url.rsplit('/', 1)[0]}/{name}"
        drop = name
    await asyncio.to_thread(migrate.upgrade, to_async_url(url))
    svc = build_services(Settings(database_url=url, master_key=SecretStr(MASTER_KEY),
                                  data_dir=tmp, allow_local_webhooks=True))
    try:
        yield svc
    finally:
        await svc.db.dispose()
        if drop is not None:
            import asyncpg

            admin = await asyncpg.connect(database_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
            await admin.close()


async def _setup(svc: Any, port: int) -> Any:
    from openpse.services import merchants
    from openpse.services import webhook_endpoints as we
    from openpse.services.context import Caller

    merchant = await merchants.create_merchant(svc, name="Bench", kyc_approved=False)
    caller = Caller(merchant_id=merchant["id"], livemode=False)
    await we.create_endpoint(svc, caller, url=f"http://127.0.0.1:{port}/hook",
                             enabled_events=["*"])
    return caller


async def _emit(svc: Any, caller: Any, count: int) -> tuple[list[str], float]:
    from openpse.services.events import record_event

    ids: list[str] = []
    async with svc.db.transaction() as tx:
        for _ in range(count):
            obj = {"id": "pay_" + secrets.token_hex(8), "object": "payment", "livemode": False,
                   "status": "succeeded", "amount": 1000, "currency": "JPY", "version": 3}
            event = await record_event(tx, caller=None, merchant_id=caller.merchant_id,
                                       livemode=False, type="payment.succeeded", obj=obj,
                                       previous={"status": "processing"}, now=int(time.time()))
            ids.append(event["id"])
    return ids, time.time()


async def _worker_loop(runner: Any, stop: asyncio.Event) -> None:
    """What ``openpse.worker.Worker.run`` does for this one job."""
    while not stop.is_set():
        if await runner.run_once(int(time.time())) == 0:
            try:
                await asyncio.wait_for(stop.wait(), WORKER_POLL_S)
            except TimeoutError:
                pass


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_mb() -> float:
    """This process's VmHWM (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_main(url: str, tmp: str, go: Any, done: Any, use_uvloop: bool,
                 usage: Any = None, ready: Any = None) -> None:
    """One delivery worker process: what ``openpse worker`` runs, until the queue is empty."""

    async def run() -> None:
        from pydantic import SecretStr

        from openpse.bootstrap import build_services
        from openpse.config import Settings
        from openpse.services.webhook_delivery import build_runner

        svc = build_services(Settings(database_url=url, master_key=SecretStr(MASTER_KEY),
                                      data_dir=Path(tmp), allow_local_webhooks=True))
        runner = build_runner(svc)
        async with svc.db.read():
            pass  # connected: what is left before "go" is the delivery work itself
        if ready is not None:
            ready.set()
        go.wait()
        cpu0 = _cpu_s()
        idle_since = None
        while idle_since is None or time.monotonic() - idle_since < 1.0:
            if await runner.run_once(int(time.time())) == 0 and runner.in_flight == 0:
                idle_since = idle_since or time.monotonic()
                await asyncio.sleep(WORKER_POLL_S)
            else:
                idle_since = None
        await runner.close()
        await svc.db.dispose()
        if usage is not None:
            usage.put({"cpu_s": _cpu_s() - cpu0, "peak_rss_mb": _peak_rss_mb()})
        done.set()

    if use_uvloop:
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


async def backlog(args: argparse.Namespace, port: int, tmp: Path) -> dict[str, Any]:
    _receiver_get(port, "/reset")
    async with _fresh_services(args.database_url, tmp) as svc:
        caller = await _setup(svc, port)
        for start in range(0, args.events, 500):
            await _emit(svc, caller, min(500, args.events - start))
        ctx = mp.get_context("spawn")
        go = ctx.Event()
        usage = ctx.Queue()
        workers = []
        readies = []
        for _ in range(args.workers):
            done, ready = ctx.Event(), ctx.Event()
            proc = ctx.Process(target=_worker_main,
                               args=(svc.db.url, str(tmp), go, done, args.uvloop, usage, ready))
            proc.start()
            workers.append((proc, done))
            readies.append(ready)
        for ready in readies:  # let the workers import and connect
            await asyncio.to_thread(ready.wait, WORKER_READY_TIMEOUT_S)
        await asyncio.sleep(args.startup_wait_s)
        started = time.time()
        go.set()
        while True:
            arrivals = _receiver_get(port, "/stats")
            if len(arrivals) >= args.events or time.time() - started > 300:
                break
            await asyncio.sleep(0.25)
        for proc, done in workers:
            await asyncio.to_thread(done.wait, 30)
            proc.join(30)
        used = []
        for _ in workers:
            try:
                used.append(usage.get(timeout=5))
            except queue.Empty:
                break
        elapsed_s = max(arrivals.values()) - started
    cpu_s = sum(u["cpu_s"] for u in used)
    return {"phase": "backlog", "backend": svc.db.dialect, "workers": args.workers,
            "uvloop": args.uvloop, "events": args.events, "received": len(arrivals),
            "seconds": round(elapsed_s, 2), "deliveries_per_s": round(len(arrivals) / elapsed_s),
            "cpu_s": round(cpu_s, 3),
            "cpu_s_per_1000": round(cpu_s / max(1, len(arrivals)) * 1000, 3),
            "peak_rss_mb": round(sum(u["peak_rss_mb"] for u in used), 1)}


async def steady(args: argparse.Namespace, port: int, tmp: Path) -> dict[str, Any]:
    from openpse.services.webhook_delivery import build_runner

    _receiver_get(port, "/reset")
    per_tx = 10
    committed: dict[str, float] = {}
    async with _fresh_services(args.database_url, tmp) as svc:
        caller = await _setup(svc, port)
        runner = build_runner(svc)
        stop = asyncio.Event()
        worker = asyncio.create_task(_worker_loop(runner, stop))
        cpu0 = _cpu_s()
        started_wall = time.time()
        started = time.perf_counter()
        total = args.steady_events
        for n in range(0, total, per_tx):
            ids, at = await _emit(svc, caller, min(per_tx, total - n))
            committed.update(dict.fromkeys(ids, at))
            ahead_s = (n + per_tx) / args.rate - (time.perf_counter() - started)
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            arrivals = _receiver_get(port, "/stats")
            if len(arrivals) >= total:
                break
            await asyncio.sleep(0.2)
        stop.set()
        await worker
        cpu_s = _cpu_s() - cpu0
        await runner.close()
    lat_ms = [(arrivals[i] - committed[i]) * 1000 for i in committed if i in arrivals]
    seconds = max(arrivals[i] for i in committed if i in arrivals) - started_wall
    return {"phase": "steady", "backend": svc.db.dialect, "events": total, "rate_per_s": args.rate,
            "received": len(lat_ms), "seconds": round(seconds, 2),
            "deliveries_per_s": round(len(lat_ms) / seconds, 1),
            "enqueue_to_2xx_ms_p50": round(statistics.median(lat_ms), 1),
            "enqueue_to_2xx_ms_p95": round(_pct(lat_ms, 0.95), 1),
            "enqueue_to_2xx_ms_p99": round(_pct(lat_ms, 0.99), 1),
            "enqueue_to_2xx_ms_max": round(max(lat_ms), 1),
            "cpu_s": round(cpu_s, 3),
            "cpu_s_per_1000": round(cpu_s / max(1, len(lat_ms)) * 1000, 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="backlog size")
    parser.add_argument("--steady-events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500.0, help="steady events per second")
    parser.add_argument("--workers", type=int, default=1,
                        help="delivery worker processes for the backlog phase")
    parser.add_argument("--uvloop", action="store_true",
                        help="run the job on uvloop (as `openpse serve` does under uvicorn)")
    parser.add_argument("--phase", choices=["backlog", "steady", "both"], default="both")
    parser.add_argument("--startup-wait-s", type=float, default=1.0,
                        help="backlog: extra settling time once every worker process has "
                             "imported and connected, before they start")
    parser.add_argument("--database-url", default=None,
                        help="postgresql://... (a fresh database is created beside it); "
                             "default: a temporary SQLite file")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver_main, args=(child,), daemon=True)
    receiver.start()
    port = parent.recv()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            phases = {"backlog": [backlog], "steady": [steady], "both": [backlog, steady]}
            run: Any = asyncio.run
            if args.uvloop:
                import uvloop

                run = uvloop.run
            for phase in phases[args.phase]:
                print(json.dumps(run(phase(args, port, Path(tmp)))), flush=True)
    finally:
        receiver.terminate()


if __name__ == "__main__":
    main()
