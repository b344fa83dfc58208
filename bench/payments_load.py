"""Signed create+confirm card payments against a running server, closed loop.

    python bench/payments_load.py --database-url sqlite:////tmp/bench/openpse.db \
        --requests 3000 --concurrency 32 --processes 2

Starts `openpse serve --no-worker` on the given database (migrating it first), creates a
merchant (`openpse merchant create --json`; rate limits off), then runs the load from separate
processes (``bench/loadgen.py``: raw HTTP/1.1 keep-alive, every request signed for real and
carrying a fresh Idempotency-Key). Prints throughput, p50/p95/p99/max latency, errors and the
server's CPU per payment as one JSON line. The whole suite is ``python -m bench.run``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/payments_load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import Auth, Workload, run_load
from bench.servers import OpenPSEServer, ProcSampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--processes", type=int, default=2, help="load generator processes")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up requests (not measured)")
    ap.add_argument("--server-workers", type=int, default=1, help="API processes")
    a = ap.parse_args()
    srv = OpenPSEServer(a.database_url, workers=a.server_workers).prepare().start()
    try:
        work = Workload("create_payment", Auth.pse(srv.access_key, srv.secret), expect=(201,))
        if a.warmup:
            run_load(srv.base_url, work, concurrency=min(8, a.concurrency),
                     requests=a.warmup, warmup_s=0, processes=a.processes)
        pg_db = a.database_url.rsplit("/", 1)[1] if a.database_url.startswith("postgres") \
            else None
        sampler = ProcSampler(srv.pid, pg_db=pg_db)
        res = run_load(srv.base_url, work, concurrency=a.concurrency, requests=a.requests,
                       warmup_s=0, processes=a.processes, on_start=sampler.start,
                       on_stop=sampler.stop)
        n = max(1, res.requests)
        print(json.dumps({
            "scenario": "create+confirm card payment (signed, idempotency key)",
            "database": a.database_url.split(":", 1)[0], "requests": res.requests,
            "errors": res.errors, "concurrency": a.concurrency,
            "server_workers": a.server_workers, "elapsed_s": round(res.elapsed_s, 2),
            "throughput_per_s": round(res.throughput_per_s, 1),
            "p50_ms": round(res.p50_ms, 1), "p95_ms": round(res.p95_ms, 1),
            "p99_ms": round(res.p99_ms, 1), "max_ms": round(res.max_ms, 1),
            "server_cpu_ms_per_payment": round(sampler.cpu_s / n * 1000, 2),
            "db_cpu_ms_per_payment": round(sampler.db_cpu_s / n * 1000, 2) if pg_db else None,
            "server_peak_rss_mb": round(srv.peak_rss_mb(), 1),
            "generator_cpu_us_per_request": round(res.gen_cpu_us_per_req, 1),
        }))
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
