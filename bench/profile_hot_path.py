"""Server CPU per signed create+confirm, measured in-process (no HTTP server, no generator).

    python bench/profile_hot_path.py --database-url sqlite:////tmp/prof/openpse.db -n 500
    python bench/profile_hot_path.py --database-url postgresql://postgres@127.0.0.1:5432/prof \
        -n 500 --profile cprofile     # or --profile pyinstrument / --sql (statements per request)

Builds the real ASGI app (pipeline, signature check, nonce, idempotency, routes) and drives it
through httpx's ASGI transport, one request at a time, so the figure is the server's own CPU
per request: what bounds throughput when the server is CPU bound. The database must be empty
and migrated (``openpse migrate``); a merchant is created here.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.signer import encode, sign_headers  # noqa: E402

MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
BASE = "http://bench.local"


def _body(i: int, capture_method: str = "automatic") -> bytes:
    return encode({"amount": 1000 + i % 500, "currency": "JPY", "merchant_order_id": f"p-{i}",
                   "payment_method": {"type": "card", "card": {
                       "number": "4242424242424242", "exp_month": 12, "exp_year": 2034,
                       "cvc": "123"}}, "confirm": True, "capture_method": capture_method})


async def _run(a: argparse.Namespace) -> dict[str, Any]:
    from openpse.bootstrap import build_app
    from openpse.config import Settings

    settings = Settings()
    rt = build_app(settings)
    if not a.no_settle:
        from openpse.bootstrap import settle_heap

        settle_heap()  # as openpse.asgi.create does for `openpse serve`
    svc = rt.services
    key, secret = a.creds["access_key"], a.creds["secret"]
    statements = [0]
    if a.sql:
        from sqlalchemy import event

        @event.listens_for(svc.db.engine.sync_engine, "before_cursor_execute")
        def _count(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
            statements[0] += 1
            if a.sql_log and statements[0] <= 80:
                print("  SQL", " ".join(sql.split())[:110])

    transport = httpx.ASGITransport(app=rt.asgi)
    async with rt.fastapi.router.lifespan_context(rt.fastapi), httpx.AsyncClient(
            transport=transport, base_url=BASE) as client:

        pay_id = [""]

        async def get(_i: int) -> None:
            path = f"/v1/payments/{pay_id[0]}"
            headers = sign_headers("GET", BASE + path, b"", key, secret)
            r = await client.get(path, headers=headers)
            if r.status_code != 200:
                raise SystemExit(f"unexpected {r.status_code}: {r.text}")

        async def listing(_i: int) -> None:  # the bench's list_payments: the newest 10
            path = "/v1/payments?limit=10"
            headers = sign_headers("GET", BASE + path, b"", key, secret)
            r = await client.get(path, headers=headers)
            if r.status_code != 200 or len(r.json()["data"]) != 10:
                raise SystemExit(f"unexpected {r.status_code}: {r.text}")

        async def healthz(_i: int) -> None:
            r = await client.get("/healthz")
            if r.status_code != 200:
                raise SystemExit(f"unexpected {r.status_code}: {r.text}")

        async def post(path: str, body: bytes, expect: int = 201) -> Any:
            """A signed POST with a new Idempotency-Key that must answer ``expect``; its JSON."""
            headers = sign_headers("POST", BASE + path, body, key, secret)
            headers["Content-Type"] = "application/json"
            headers["Idempotency-Key"] = uuid.uuid4().hex
            r = await client.post(path, content=body, headers=headers)
            if r.status_code != expect:
                raise SystemExit(f"unexpected {r.status_code}: {r.text}")
            return r.json()

        async def one(i: int) -> None:
            pay_id[0] = (await post("/v1/payments", _body(i)))["id"]

        refundable: list[str] = []

        async def refund(i: int) -> None:  # 1 of a payment made before the measurement
            await post("/v1/refunds", encode({"payment": refundable[i % len(refundable)],
                                              "amount": 1}))

        async def checkout(i: int) -> None:
            await post("/v1/checkout/sessions", encode({
                "amount": 1000 + i % 500, "currency": "JPY", "merchant_order_id": f"cs-{i}",
                "payment_method_types": ["card"], "success_url": "https://shop.example/ok",
                "cancel_url": "https://shop.example/cancel"}))

        async def capture(_i: int) -> None:  # a payment authorized before, each once
            await post(f"/v1/payments/{refundable.pop()}/capture", b"{}", expect=200)

        for i in range(a.warmup):
            await one(10**6 + i)
        if a.scenario in ("refund", "capture"):
            method = "manual" if a.scenario == "capture" else "automatic"
            for i in range(a.warmup + a.n):
                made = await post("/v1/payments", _body(2 * 10**6 + i, method))
                refundable.append(made["id"])
        run = {"create": one, "get": get, "list": listing, "healthz": healthz, "refund": refund,
               "checkout": checkout, "capture": capture}[a.scenario]
        for i in range(a.warmup):
            await run(10**6 + i)
        if a.barrier:
            await _meet(Path(a.barrier), a.parties)
        statements[0] = 0
        prof: Any = None
        if a.profile == "cprofile":
            prof = cProfile.Profile(time.process_time)
            prof.enable()
        elif a.profile == "pyinstrument":
            from pyinstrument import Profiler

            prof = Profiler(async_mode="enabled")
            prof.start()
        gc_time = _GcTime()
        gc.callbacks.append(gc_time)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(a.n):
            await run(i)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        gc.callbacks.remove(gc_time)
        if a.profile == "cprofile":
            prof.disable()
            if a.dump:
                prof.dump_stats(a.dump)
            pstats.Stats(prof).sort_stats(a.sort).print_stats(a.top)
        elif a.profile == "pyinstrument":
            prof.stop()
            print(prof.output_text(unicode=False, show_all=False))
    import openpse

    return {"scenario": a.scenario, "code": os.path.dirname(openpse.__file__),
            "database": settings.resolved_database_url().split(":", 1)[0], "requests": a.n,
            "cpu_ms_per_request": round(cpu / a.n * 1000, 3),
            "wall_ms_per_request": round(wall / a.n * 1000, 3),
            "statements_per_request": round(statements[0] / a.n, 1) if a.sql else None,
            "gc_ms_per_request": round(gc_time.seconds / a.n * 1000, 4),
            "gc_collections": gc_time.collections}


async def _meet(where: Path, parties: int, timeout_s: float = 600.0) -> None:
    """Wait until ``parties`` runs (this one included) are ready to measure: each leaves a file
    in ``where`` (``bench/ab.py`` starts two at once; their set-up takes different times)."""
    _arrive(where)
    deadline = time.monotonic() + timeout_s
    while _arrived(where) < parties:
        if time.monotonic() > deadline:
            raise SystemExit(f"the other runs never reached {where}")
        await asyncio.sleep(0.01)


def _arrive(where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    (where / str(os.getpid())).touch()


def _arrived(where: Path) -> int:
    return len(list(where.iterdir()))


class _GcTime:
    """Time the cyclic garbage collector ran (``gc.callbacks``), and its runs per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections[info["generation"]] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--scenario",
                    choices=["create", "get", "list", "healthz", "refund", "checkout", "capture"],
                    default="create",
                    help="create+confirm (default), a signed GET of one payment, a list of "
                         "10, /healthz, a refund of 1 of a payment made before (one payment "
                         "each), a "
                         "checkout session's creation, or a capture of a payment authorized "
                         "before (one each)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--profile", choices=["none", "cprofile", "pyinstrument"], default="none")
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--dump", help="write the cProfile stats to this file")
    ap.add_argument("--sql", action="store_true", help="count statements per request")
    ap.add_argument("--no-settle", action="store_true",
                    help="skip bootstrap.settle_heap (the collector's freeze `serve` does)")
    ap.add_argument("--sql-log", action="store_true", help="print the statements (use -n 1)")
    ap.add_argument("--barrier", help="a directory: after the warm-up, wait there until "
                                      "--parties runs are ready, then measure (bench/ab.py)")
    ap.add_argument("--parties", type=int, default=2)
    a = ap.parse_args()
    data_dir = tempfile.mkdtemp(prefix="openpse-prof-")
    os.environ.update(OPENPSE_DATABASE_URL=a.database_url, OPENPSE_MASTER_KEY=MASTER_KEY,
                      OPENPSE_DATA_DIR=data_dir, OPENPSE_RATE_LIMIT="0",
                      OPENPSE_LOG_LEVEL="WARNING")
    exe = str(Path(sys.executable).with_name("openpse"))
    subprocess.run([exe, "migrate"], check=True, capture_output=True)
    out = subprocess.run([exe, "merchant", "create", "--name", "Profile", "--json"], check=True,
                         capture_output=True, text=True)
    a.creds = json.loads(out.stdout)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_run(a))))


if __name__ == "__main__":
    main()
