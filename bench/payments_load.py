"""Signed create+confirm card payments against a running server, closed loop.

    python bench/payments_load.py --database-url sqlite:////tmp/bench/openpse.db \
        --requests 3000 --concurrency 32 --processes 2

Starts `openpse serve` on the given database (migrating it first), creates a merchant with an
unlimited rate, then runs the load from separate processes (so the generator is not the server's
bottleneck on the same core), every request signed for real and carrying an Idempotency-Key.
Prints throughput, p50/p95/p99/max latency and errors as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.signer import encode, sign_headers  # noqa: E402

MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _body(i: int) -> bytes:
    return encode({"amount": 1000 + i % 500, "currency": "JPY", "merchant_order_id": f"b-{i}",
                   "payment_method": {"type": "card", "card": {
                       "number": "4242424242424242", "exp_month": 12, "exp_year": 2034,
                       "cvc": "123"}}, "confirm": True})


async def _worker_loop(base: str, key: str, secret: str, n: int, conc: int, offset: int,
                       out: list[float], errors: list[int]) -> None:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        counter = iter(range(n))

        async def one() -> None:
            for i in counter:
                body = _body(offset + i)
                headers = sign_headers("POST", base + "/v1/payments", body, key, secret)
                headers["Content-Type"] = "application/json"
                headers["Idempotency-Key"] = uuid.uuid4().hex
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/payments", content=body, headers=headers)
                    ok = r.status_code == 201
                except httpx.HTTPError:
                    ok = False
                out.append(time.perf_counter() - t0)
                if not ok:
                    errors.append(1)

        await asyncio.gather(*(one() for _ in range(conc)))


def _proc(args: tuple[str, str, str, int, int, int, mp.Queue]) -> None:  # type: ignore[type-arg]
    base, key, secret, n, conc, offset, q = args
    lat: list[float] = []
    errs: list[int] = []
    asyncio.run(_worker_loop(base, key, secret, n, conc, offset, lat, errs))
    q.put((lat, len(errs)))


def _pct(sorted_lat: list[float], p: float) -> float:
    if not sorted_lat:
        return 0.0
    return sorted_lat[min(len(sorted_lat) - 1, int(p * len(sorted_lat)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--server-workers", type=int, default=1, help="API processes")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="openpse-bench-"))
    env = dict(os.environ, OPENPSE_DATABASE_URL=a.database_url, OPENPSE_MASTER_KEY=MASTER_KEY,
               OPENPSE_DATA_DIR=str(tmp), OPENPSE_RATE_LIMIT="0", OPENPSE_LOG_LEVEL="WARNING")
    exe = str(Path(sys.executable).with_name("openpse"))
    subprocess.run([exe, "migrate"], env=env, check=True, capture_output=True)
    out = subprocess.run([exe, "merchant", "create", "--name", "Bench", "--json"], env=env,
                         check=True, capture_output=True, text=True)
    creds = json.loads(out.stdout)
    port = _free_port()
    server = subprocess.Popen([exe, "serve", "--port", str(port), "--no-worker",
                               "--workers", str(a.server_workers)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        key, secret = creds["access_key"], creds["secret"]
        q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        _proc((base, key, secret, a.warmup, 8, 10**7 + secrets.randbelow(10**6), q))
        q.get()
        per = a.requests // a.processes
        procs = [mp.Process(target=_proc, args=((base, key, secret, per,
                                                 a.concurrency // a.processes, i * per, q),))
                 for i in range(a.processes)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        results = [q.get() for _ in procs]
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join()
        lat = sorted(x for r in results for x in r[0])
        errors = sum(r[1] for r in results)
        print(json.dumps({
            "scenario": "create+confirm card payment (signed, idempotency key)",
            "database": a.database_url.split(":", 1)[0], "requests": len(lat), "errors": errors,
            "concurrency": a.concurrency, "server_workers": a.server_workers,
            "elapsed_s": round(elapsed, 2),
            "throughput_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(_pct(lat, 0.50), 1), "p95_ms": round(_pct(lat, 0.95), 1),
            "p99_ms": round(_pct(lat, 0.99), 1), "max_ms": round(lat[-1] * 1000, 1) if lat else 0,
        }))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
