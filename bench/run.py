"""The OpenPSE benchmark suite: one command runs every scenario and writes a results table.

    .venv/bin/python -m bench.run                                # both backends, 20 s a scenario
    .venv/bin/python -m bench.run --smoke --backends sqlite      # every scenario, tiny
    .venv/bin/python -m bench.run --quick --only create_confirm,prototype_create_confirm
    .venv/bin/python bench/run.py --backends postgresql --duration 10 --concurrency 16

Writes ``bench/results/<date>-<profile>.md`` and ``.json`` (and ``latest.md``/``latest.json``;
``--out`` elsewhere) and prints the Markdown. See ``bench/README.md`` for what each scenario
measures and how; ``--list`` prints the scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peer_localstripe as peer
from bench.loadgen import (
    MAX_ERROR_SAMPLES,
    Auth,
    LoadResult,
    Workload,
    added_statuses,
    latency_ms,
    percentile,
    run_load,
)
from bench.prototype import create_schema_pg, pgbench_script
from bench.report import Report, Row, machine_header
from bench.servers import (
    OpenPSEServer,
    PGCpuWatcher,
    ProcSampler,
    ScratchPG,
    free_port,
    stop_process,
    tree_peak_rss_mb,
    wait_http_ok,
)

ROOT: Final = Path(__file__).resolve().parents[1]
BENCH: Final = ROOT / "bench"
DEFAULT_PG_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
PROTO_KEY: Final = "ak_test_prototype"
PROTO_SECRET: Final = "sk_test_prototype_0123456789abcdef"
OPEN_LOOP_SHARE: Final = 0.7  # default open-loop rate: this share of the closed-loop throughput
# Issue 7's latency target: under an open loop of 500 payments/s, PostgreSQL's p99 at most 50 ms
TARGET_P99_MS: Final = 50.0
SUBPROCESS_TIMEOUT_S: Final = 3600
SCALE_ROUNDS: Final = 3  # pairs of (empty, loaded) phases in the data-scale scenario

SCENARIOS: Final = {
    "floor_healthz": "GET /healthz on the same openpse server, same generator (the HTTP floor)",
    "create_confirm": "signed POST /v1/payments confirm:true, card 4242..., closed loop",
    "create_confirm_open": "the same at a fixed arrival rate (open loop)",
    "create_confirm_target": "the same at the latency target's arrival rate (500/s; "
                             "PostgreSQL's p99 target is 50 ms)",
    "get_payment": "GET /v1/payments/{id}",
    "list_payments": "GET /v1/payments?limit=10",
    "refund": "POST /v1/refunds {payment, amount: 1} of payments made earlier",
    "checkout_session": "POST /v1/checkout/sessions",
    "webhook_backlog": "bench/webhook_throughput.py: drain a backlog of deliveries",
    "webhook_steady": "bench/webhook_throughput.py: enqueue-to-2xx latency at a steady rate",
    "scale_create_confirm": "create+confirm after bulk-loading --scale-payments payments, in "
                            "phases alternating with a second, empty database's",
    "ledger_verify": "`openpse ledger verify` over the bulk-loaded ledger",
    "prototype_create_confirm": "bench/prototype.py: the same request, the same writes, bare",
    "floor_db": "the payment transaction alone: pgbench (PostgreSQL) / sqlite3 loop (SQLite)",
    "peer_create_confirm": "localstripe: POST /v1/payment_intents confirm=true pm_card_visa",
    "peer_refund": "localstripe: POST /v1/refunds payment_intent=..., amount=1",
    "peer_get": "localstripe: GET /v1/payment_intents/{id}",
}
GROUPS: Final = {
    "floor": ["floor_healthz", "floor_db"],
    "peer": ["peer_create_confirm", "peer_refund", "peer_get"],
    "webhooks": ["webhook_backlog", "webhook_steady"],
    "scale": ["scale_create_confirm", "ledger_verify"],
    "api": ["create_confirm", "create_confirm_open", "create_confirm_target", "get_payment",
            "list_payments", "refund", "checkout_session"],
}
SERVER_SCENARIOS: Final = {"floor_healthz", "create_confirm", "create_confirm_open",
                           "create_confirm_target", "get_payment", "list_payments", "refund",
                           "checkout_session",
                           "scale_create_confirm", "ledger_verify"}
PEER_SCENARIOS: Final = set(GROUPS["peer"])

PROFILES: Final[dict[str, dict[str, Any]]] = {
    "full": {"duration_s": 20.0, "warmup_s": 3.0, "concurrency": 32, "scale_payments": 1_000_000,
             "webhook_events": 10000, "webhook_steady_events": 3000, "webhook_rate": 500.0,
             "webhook_startup_wait_s": 1.0, "pgbench_clients": 8, "target_rate": 500.0},
    "quick": {"duration_s": 5.0, "warmup_s": 1.0, "concurrency": 32, "scale_payments": 100_000,
              "webhook_events": 2000, "webhook_steady_events": 1000, "webhook_rate": 300.0,
              "webhook_startup_wait_s": 1.0, "pgbench_clients": 8, "target_rate": 500.0},
    "smoke": {"duration_s": 0.4, "warmup_s": 0.1, "concurrency": 8, "scale_payments": 2000,
              "webhook_events": 200, "webhook_steady_events": 50, "webhook_rate": 100.0,
              "webhook_startup_wait_s": 0.1, "pgbench_clients": 4, "target_rate": 100.0},
}


@dataclass
class Config:
    profile: str
    backends: list[str]
    scenarios: list[str]
    out: Path
    duration_s: float
    warmup_s: float
    requests: int
    concurrency: int
    rate: float
    target_rate: float
    server_workers: int
    processes: int
    scale_payments: int
    pg_url: str
    webhook_events: int
    webhook_steady_events: int
    webhook_rate: float
    webhook_workers: int
    webhook_startup_wait_s: float
    pgbench_clients: int
    peer: str  # auto | off | install
    keep: bool
    settings: dict[str, Any] = field(default_factory=dict)


def _expand(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    wanted: set[str] = set()
    for name in (n.strip() for n in only.split(",") if n.strip()):
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SCENARIOS:
            wanted.add(name)
        else:
            raise SystemExit(f"unknown scenario {name!r}; --list shows them")
    return [s for s in SCENARIOS if s in wanted]


def parse_args(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(
        description="The OpenPSE benchmark suite (writes Markdown + JSON to bench/results/).")
    prof = ap.add_mutually_exclusive_group()
    prof.add_argument("--smoke", action="store_true",
                      help="every scenario, tiny (a few seconds each): checks the suite works")
    prof.add_argument("--quick", action="store_true", help="5 s a scenario, 100k scale payments")
    ap.add_argument("--backends", default="sqlite,postgresql",
                    help="comma-separated: sqlite, postgresql (default both)")
    ap.add_argument("--only", help="comma-separated scenarios or groups (" +
                    ", ".join(GROUPS) + "); default all")
    ap.add_argument("--list", action="store_true", help="print the scenarios and exit")
    ap.add_argument("--out", type=Path, default=BENCH / "results", help="results directory")
    ap.add_argument("--duration", type=float, help="seconds measured per scenario")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up before each measurement")
    ap.add_argument("--requests", type=int, default=0,
                    help="a fixed number of requests per scenario instead of --duration")
    ap.add_argument("--concurrency", type=int, help="closed-loop connections (default 32)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="open-loop arrivals/s (default: 0.7 x the closed-loop throughput)")
    ap.add_argument("--target-rate", type=float,
                    help="create_confirm_target's open-loop arrivals/s (default 500: issue 7's "
                         "latency target; 100 under --smoke)")
    ap.add_argument("--server-workers", type=int, default=1,
                    help="`openpse serve --workers N` API processes")
    ap.add_argument("--processes", type=int, default=2, help="load generator processes")
    ap.add_argument("--scale-payments", type=int,
                    help="payments bulk-loaded for the scale scenario (default 1,000,000)")
    ap.add_argument("--pg-url", default=os.environ.get("OPENPSE_TEST_PG_URL", DEFAULT_PG_URL),
                    help="a PostgreSQL server to make scratch databases on (its `postgres` "
                         "database is used to create and drop them)")
    ap.add_argument("--webhook-events", type=int)
    ap.add_argument("--webhook-steady-events", type=int)
    ap.add_argument("--webhook-rate", type=float)
    ap.add_argument("--webhook-workers", type=int, default=0,
                    help="delivery worker processes for the backlog (default 1 on SQLite, 2 on "
                         "PostgreSQL)")
    peer_opt = ap.add_mutually_exclusive_group()
    peer_opt.add_argument("--no-peer", action="store_true", help="skip localstripe")
    peer_opt.add_argument("--install-peer", action="store_true",
                          help="install localstripe's venv even under --smoke")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args(argv)
    if a.list:
        for name, what in SCENARIOS.items():
            print(f"{name:26} {what}")
        print("groups: " + "; ".join(f"{g} = {', '.join(v)}" for g, v in GROUPS.items()))
        raise SystemExit(0)
    profile = "smoke" if a.smoke else "quick" if a.quick else "full"
    p = PROFILES[profile]
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgresql"):
            raise SystemExit(f"unknown backend {b!r}: sqlite or postgresql")

    def pick(value: Any, key: str) -> Any:
        return p[key] if value is None else value

    cfg = Config(
        profile=profile, backends=backends, scenarios=_expand(a.only), out=a.out,
        duration_s=pick(a.duration, "duration_s"), warmup_s=pick(a.warmup, "warmup_s"),
        requests=a.requests, concurrency=pick(a.concurrency, "concurrency"), rate=a.rate,
        target_rate=pick(a.target_rate, "target_rate"),
        server_workers=a.server_workers, processes=a.processes,
        scale_payments=pick(a.scale_payments, "scale_payments"),
        pg_url=a.pg_url.replace("postgresql+asyncpg://", "postgresql://"),
        webhook_events=pick(a.webhook_events, "webhook_events"),
        webhook_steady_events=pick(a.webhook_steady_events, "webhook_steady_events"),
        webhook_rate=pick(a.webhook_rate, "webhook_rate"), webhook_workers=a.webhook_workers,
        webhook_startup_wait_s=p["webhook_startup_wait_s"], pgbench_clients=p["pgbench_clients"],
        peer="off" if a.no_peer else "install" if a.install_peer or profile != "smoke" else "auto",
        keep=a.keep,
    )
    cfg.settings = {
        "profile": profile, "backends": "+".join(backends),
        "measure": f"{cfg.requests} requests" if cfg.requests else f"{cfg.duration_s:g} s",
        "warmup_s": cfg.warmup_s, "concurrency": cfg.concurrency,
        "open_rate": cfg.rate or f"{OPEN_LOOP_SHARE:g} x closed",
        "target_rate": cfg.target_rate, "server_workers":
        cfg.server_workers, "generator_processes": cfg.processes,
        "scale_payments": cfg.scale_payments,
    }
    return cfg


# --- the suite -----------------------------------------------------------------------------------


def _merge(phases: list[tuple[LoadResult, ProcSampler]]) -> tuple[LoadResult, ProcSampler]:
    """Several measured phases of one side as one: counts, time, CPU and memory growth added
    up, percentiles over all their latencies."""
    results = [r for r, _ in phases]
    lat = sorted(x for r in results for x in r.latencies_s)
    elapsed = sum(r.elapsed_s for r in results)
    n = sum(r.requests for r in results)
    gen_cpu = sum(r.gen_cpu_s for r in results)
    p50, p95, p99, top = latency_ms(lat)
    first = results[0]
    merged = LoadResult(
        mode=first.mode, requests=n, errors=sum(r.errors for r in results), elapsed_s=elapsed,
        throughput_per_s=n / elapsed if elapsed > 0 else 0.0, p50_ms=p50, p95_ms=p95,
        p99_ms=p99, max_ms=top, statuses=added_statuses(r.statuses for r in results),
        error_samples=[e for r in results for e in r.error_samples][:MAX_ERROR_SAMPLES],
        gen_processes=first.gen_processes, gen_cpu_s=gen_cpu,
        gen_cpu_us_per_req=gen_cpu / n * 1e6 if n else 0.0, concurrency=first.concurrency,
        rate_start_per_s=first.rate_start_per_s, rate_end_per_s=results[-1].rate_end_per_s,
        latencies_s=lat)
    samplers = [s for _, s in phases]
    sampler = ProcSampler(samplers[0].root, pg_db=samplers[0].pg_db)
    sampler.cpu_s = sum(s.cpu_s for s in samplers)
    sampler.db_cpu_s = sum(s.db_cpu_s for s in samplers)
    sampler.rss_growth_mb = sum(s.rss_growth_mb for s in samplers)  # over its phases alone
    return merged, sampler


class Suite:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tmp = Path(tempfile.mkdtemp(prefix="openpse-bench-"))
        self.pg = ScratchPG(cfg.pg_url)
        self.pg_version: str | None = None
        self.report = Report(machine={}, settings=cfg.settings)
        self.selected = set(cfg.scenarios)
        self.t0 = time.perf_counter()

    # helpers

    def _dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fresh_db(self, backend: str, purpose: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self._dir(purpose)}/{purpose}.db"
        return self.pg.create(purpose)

    def drop_db(self, url: str) -> None:
        if url.startswith("postgresql"):
            self.pg.drop(url)

    @staticmethod
    def _dbname(url: str) -> str | None:
        return url.rsplit("/", 1)[1] if url.startswith("postgresql") else None

    def load(self, base_url: str, workload: Workload, root_pid: int, db_url: str, *,
             mode: str = "closed", rate: float = 0.0, requests: int | None = None,
             warmup_s: float | None = None,
             duration_s: float | None = None) -> tuple[LoadResult, ProcSampler]:
        cfg = self.cfg
        sampler = ProcSampler(root_pid, pg_db=self._dbname(db_url))
        res = run_load(base_url, workload, mode=mode, concurrency=cfg.concurrency, rate=rate,
                       duration_s=cfg.duration_s if duration_s is None else duration_s,
                       requests=cfg.requests if requests is None else requests,
                       warmup_s=cfg.warmup_s if warmup_s is None else warmup_s,
                       processes=cfg.processes, on_start=sampler.start, on_stop=sampler.stop)
        return res, sampler

    def add_load_row(self, scenario: str, backend: str, system: str, unit: str, res: LoadResult,
                     sampler: ProcSampler, rss_mb: float, **extra: Any) -> Row:
        n = max(1, res.requests)
        mode = (f"closed c={res.concurrency}" if res.mode == "closed"
                else f"open {res.target_rate_per_s:.0f}/s")
        if res.mode == "open":
            extra |= {"scheduled": res.scheduled, "dropped": res.dropped, "late": res.late,
                      "late_after_ms": 10}
            mode += f" ({res.dropped} dropped, {res.late} late)"
        row = Row(
            scenario=scenario, backend=backend, system=system, mode=mode, unit=unit,
            throughput_per_s=res.throughput_per_s, requests=res.requests, errors=res.errors,
            elapsed_s=res.elapsed_s, p50_ms=res.p50_ms, p95_ms=res.p95_ms, p99_ms=res.p99_ms,
            max_ms=res.max_ms, cpu_s_per_1000=sampler.cpu_s / n * 1000,
            db_cpu_s_per_1000=sampler.db_cpu_s / n * 1000 if sampler.pg_db else None,
            peak_rss_mb=rss_mb, rss_growth_mb=sampler.rss_growth_mb,
            gen_cpu_us_per_req=res.gen_cpu_us_per_req,
            extra={"statuses": res.statuses, "error_samples": res.error_samples,
                   "rate_start_per_s": res.rate_start_per_s, "rate_end_per_s": res.rate_end_per_s,
                   "server_cpu_s": sampler.cpu_s, "db_cpu_s": sampler.db_cpu_s,
                   "gen_processes": res.gen_processes, **extra})
        return self.add(row)

    def add(self, row: Row) -> Row:
        self.report.rows.append(row)
        lat = "" if row.p50_ms is None else (
            f"  p50 {row.p50_ms:.1f}  p99 {row.p99_ms or 0:.1f}  max {row.max_ms or 0:.1f} ms")
        print(f"  [{time.perf_counter() - self.t0:5.1f}s] {row.scenario:25} {row.backend:10} "
              f"{row.system:11} "
              f"{row.throughput_per_s:9.1f} {row.unit}/s{lat}  errors {row.errors}  "
              f"cpu {row.cpu_s_per_1000:.2f} s/1k", flush=True)
        if row.errors and row.extra.get("error_samples"):
            print("    first errors: " + " | ".join(row.extra["error_samples"][:3]), flush=True)
        return row

    def guarded(self, scenario: str, backend: str, fn: Callable[[], Any]) -> Any:
        """Run one step; a failure is recorded as a skip with its reason, not a crash."""
        try:
            return fn()
        except Exception as exc:
            traceback.print_exc()
            self.report.skip(scenario, backend, f"failed: {exc!r}"[:500])
            return None

    # OpenPSE's own server

    def run_openpse(self, backend: str) -> None:
        sel = self.selected
        needs_bulk = bool(sel & {"scale_create_confirm", "ledger_verify"})
        if not sel & SERVER_SCENARIOS:
            return
        url = self.fresh_db(backend, "main")
        srv = OpenPSEServer(url, workers=self.cfg.server_workers,
                            data_dir=self._dir(f"openpse-{backend}"))
        try:
            srv.prepare().start()
            self._api_scenarios(backend, srv)
            if needs_bulk:
                # PostgreSQL: the server stays up (idle) while the data grows under it. SQLite:
                # the loader wants the file to itself (its fastest path), so the server restarts.
                if backend == "sqlite":
                    srv.stop()
                bulk = self.guarded("bulk_load", backend, lambda: self.bulk_load(backend, srv))
                if "scale_create_confirm" in sel:
                    if bulk is None:
                        self.report.skip("scale_create_confirm", backend,
                                         "the bulk load did not run (see above)")
                    else:
                        if srv.proc is None:
                            srv.start()
                        self.guarded("scale_create_confirm", backend,
                                     lambda: self._scale(backend, srv, bulk))
            srv.stop()
            if needs_bulk:
                if "ledger_verify" in sel:
                    self.guarded("ledger_verify", backend,
                                 lambda: self.ledger_verify(backend, srv, bulk))
        finally:
            srv.stop()
            self.drop_db(url)

    def _api_scenarios(self, backend: str, srv: OpenPSEServer) -> None:
        sel, cfg = self.selected, self.cfg
        auth = Auth.pse(srv.access_key, srv.secret)
        url = srv.database_url

        def measure(scenario: str, unit: str, w: Workload, **kw: Any) -> Row:
            res, sampler = self.load(srv.base_url, w, srv.pid, url, **kw)
            return self.add_load_row(scenario, backend, "openpse", unit, res, sampler,
                                     srv.peak_rss_mb())

        ids: list[str] = []
        if "floor_healthz" in sel:
            self.guarded("floor_healthz", backend,
                         lambda: measure("floor_healthz", "requests", Workload("healthz")))
        create = Workload("create_payment", auth, expect=(201,), collect_ids=True,
                          id_prefix="pay_")
        closed: Row | None = None
        if sel & {"create_confirm", "scale_create_confirm"}:
            def run_create() -> Row:
                res, sampler = self.load(srv.base_url, create, srv.pid, url)
                ids.extend(res.ids)
                return self.add_load_row("create_confirm", backend, "openpse", "payments", res,
                                         sampler, srv.peak_rss_mb())
            closed = self.guarded("create_confirm", backend, run_create)
        if "create_confirm_open" in sel:
            rate = cfg.rate or max(1.0, round(OPEN_LOOP_SHARE * closed.throughput_per_s, 1)
                                   if closed else 20.0)

            def run_open() -> Row:
                res, sampler = self.load(srv.base_url, create, srv.pid, url, mode="open",
                                         rate=rate)
                ids.extend(res.ids)
                return self.add_load_row("create_confirm_open", backend, "openpse", "payments",
                                         res, sampler, srv.peak_rss_mb())
            self.guarded("create_confirm_open", backend, run_open)
        if "create_confirm_target" in sel:
            def run_target() -> Row:
                res, sampler = self.load(srv.base_url, create, srv.pid, url, mode="open",
                                         rate=cfg.target_rate)
                ids.extend(res.ids)
                row = self.add_load_row("create_confirm_target", backend, "openpse",
                                        "payments", res, sampler, srv.peak_rss_mb())
                if backend == "postgresql" and res.p99_ms is not None:
                    met = res.p99_ms <= TARGET_P99_MS and not res.dropped
                    row.vs = (f"p99 target ≤ {TARGET_P99_MS:g} ms at {cfg.target_rate:g}/s: "
                              + ("met" if met else "not met"))
                return row
            self.guarded("create_confirm_target", backend, run_target)
        if sel & {"get_payment", "refund"} and not ids:
            res = run_load(srv.base_url, create, concurrency=cfg.concurrency,
                           requests=max(50, cfg.concurrency * 4), warmup_s=0,
                           processes=cfg.processes)
            ids.extend(res.ids)
        if not ids:
            ids.append("pay_missing")  # the scenarios below then fail loudly with 404s
        steps = [("get_payment", "requests", Workload("get_payment", auth, ids=tuple(ids))),
                 ("list_payments", "requests", Workload("list_payments", auth)),
                 ("refund", "refunds", Workload("refund", auth, expect=(201,), ids=tuple(ids))),
                 ("checkout_session", "sessions",
                  Workload("checkout_session", auth, expect=(201,)))]
        for scenario, unit, w in steps:
            if scenario in sel:
                self.guarded(scenario, backend, partial(measure, scenario, unit, w))

    def bulk_load(self, backend: str, srv: OpenPSEServer) -> dict[str, Any]:
        script = BENCH / "bulk_load.py"
        if not script.exists():
            raise RuntimeError("bench/bulk_load.py is not there (expected interface: "
                               "`python bench/bulk_load.py --database-url URL --payments N` "
                               "printing one JSON line)")
        n = self.cfg.scale_payments
        print(f"  bulk-loading {n:,} payments into the {backend} database...", flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, str(script), "--database-url", srv.database_url, "--payments",
             str(n), "--merchant-id", srv.merchant_id, "--currency", "JPY"],
            env=srv.env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"bulk_load.py exited {res.returncode}: {res.stderr[-1500:]}")
        line = [x for x in res.stdout.splitlines() if x.startswith("{")][-1]
        out: dict[str, Any] = json.loads(line)
        out = {k: v for k, v in out.items() if k not in ("secret", "access_key")}
        out["wall_s"] = time.perf_counter() - t0
        # the loader writes without waiting for the disk; flush its dirty pages now, or the
        # first fsync of the next measured phase pays for them (seen: 20 s stalls)
        t1 = time.perf_counter()
        os.sync()
        out["sync_s"] = time.perf_counter() - t1
        self.report.extra.setdefault("bulk_load", {})[backend] = out
        print(f"  bulk load: {n:,} payments in {out['wall_s']:.1f} s (then {out['sync_s']:.1f} s "
              "to flush them to disk)", flush=True)
        return out

    def _scale(self, backend: str, srv: OpenPSEServer, bulk: dict[str, Any]) -> None:
        """The loaded database's figure against an empty one's, in phases that alternate
        (empty, loaded, empty, loaded, ...) so that both see the same machine: this machine's
        speed drifts by tens of per cent within minutes, which made a single after-load phase
        compared with the run's first phase a measure of the drift as much as of the size."""
        ref = OpenPSEServer(self.fresh_db(backend, "scale-empty"),
                            workers=self.cfg.server_workers,
                            data_dir=self._dir(f"openpse-{backend}-scale-empty"))
        phase_s = max(self.cfg.duration_s / 2, 0.2)
        rounds = SCALE_ROUNDS if self.cfg.profile != "smoke" else 2
        sides: dict[str, list[tuple[LoadResult, ProcSampler]]] = {"empty": [], "loaded": []}
        try:
            ref.prepare().start()
            for _ in range(rounds):
                for side, s in (("empty", ref), ("loaded", srv)):
                    w = Workload("create_payment", Auth.pse(s.access_key, s.secret),
                                 expect=(201,))
                    sides[side].append(self.load(s.base_url, w, s.pid, s.database_url,
                                                 duration_s=phase_s))
            ref_rss = ref.peak_rss_mb()
        finally:
            ref.stop()
            self.drop_db(ref.database_url)
        pairs = [b.throughput_per_s / a.throughput_per_s if a.throughput_per_s > 0 else 0.0
                 for (a, _), (b, _) in zip(sides["empty"], sides["loaded"], strict=True)]
        loaded = (f"after {bulk['payments']:,} payments, {rounds} phases of {phase_s:g} s "
                  "alternating with an empty database")
        for scenario, side, rss, mode in (
                ("scale_create_confirm_empty", "empty", ref_rss,
                 f"a second, empty database, {rounds} phases alternating with the loaded one"),
                ("scale_create_confirm", "loaded", srv.peak_rss_mb(), loaded)):
            res, sampler = _merge(sides[side])
            row = self.add_load_row(scenario, backend, "openpse", "payments", res, sampler, rss,
                                    payments_loaded=bulk["payments"] if side == "loaded" else 0,
                                    phases_per_s=[round(r.throughput_per_s, 1)
                                                  for r, _ in sides[side]],
                                    paired_ratios=[round(x, 3) for x in pairs])
            row.mode += ", " + mode
        self.report.notes.append(
            f"data scale ({backend}): loaded/empty per pair of adjacent phases "
            + ", ".join(f"{x:.2f}" for x in pairs)
            + f" (median {statistics.median(pairs):.2f}); the table's ratio is of the sums")

    def ledger_verify(self, backend: str, srv: OpenPSEServer,
                      bulk: dict[str, Any] | None) -> None:
        exe = str(Path(sys.executable).with_name("openpse"))
        out_file = self._dir("ledger") / f"verify-{backend}.json"
        dbname = self._dbname(srv.database_url)
        watcher = PGCpuWatcher(dbname) if dbname else None
        if watcher:
            watcher.start()
        t0 = time.perf_counter()
        with open(out_file, "wb") as out:
            proc = subprocess.Popen([exe, "ledger", "verify", "--json"], env=srv.env,
                                    stdout=out, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        db_cpu = watcher.stop() if watcher else 0.0
        text = out_file.read_text().strip()
        if not text:
            raise RuntimeError(f"ledger verify printed nothing (exit {proc.returncode})")
        verdict = json.loads(text.splitlines()[-1])
        postings = int(verdict["postings"])
        cpu = usage.ru_utime + usage.ru_stime
        per = 1000 / max(1, postings)
        self.add(Row(
            scenario="ledger_verify", backend=backend, system="openpse",
            mode=f"CLI, {elapsed:.2f} s" + (f", {bulk['payments']:,} payments loaded" if bulk
                                            else ", no bulk load"),
            unit="postings", throughput_per_s=postings / elapsed, requests=postings,
            errors=0 if verdict["ok"] and proc.returncode == 0 else 1, elapsed_s=elapsed,
            cpu_s_per_1000=cpu * per, db_cpu_s_per_1000=db_cpu * per if watcher else None,
            peak_rss_mb=usage.ru_maxrss / 1024,
            extra={"journals": verdict["journals"], "accounts": verdict["accounts"],
                   "problems": verdict["problems"][:5], "cli_cpu_s": cpu, "db_cpu_s": db_cpu}))

    # webhooks

    def webhooks(self, backend: str) -> None:
        cfg = self.cfg
        want = [s for s in ("webhook_backlog", "webhook_steady") if s in self.selected]
        if not want:
            return
        workers = cfg.webhook_workers or (2 if backend == "postgresql" else 1)
        phase = "both" if len(want) == 2 else want[0].split("_")[1]
        cmd = [sys.executable, str(BENCH / "webhook_throughput.py"), "--uvloop",
               "--events", str(cfg.webhook_events), "--steady-events",
               str(cfg.webhook_steady_events), "--rate", str(cfg.webhook_rate),
               "--workers", str(workers), "--phase", phase,
               "--startup-wait-s", str(cfg.webhook_startup_wait_s)]
        if backend == "postgresql":
            cmd += ["--database-url", self.pg.admin_url]
        env = dict(os.environ, OPENPSE_LOG_LEVEL="WARNING", TMPDIR=str(self._dir("webhooks")))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=SUBPROCESS_TIMEOUT_S)
        if res.returncode != 0:
            raise RuntimeError(f"webhook_throughput.py exited {res.returncode}: "
                               f"{res.stderr[-1500:]}")
        for line in res.stdout.splitlines():
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            received = int(d["received"])
            if d["phase"] == "backlog":
                self.add(Row(
                    scenario="webhook_backlog", backend=backend, system="openpse",
                    mode=f"drain {d['events']}, {d['workers']} worker(s)", unit="deliveries",
                    throughput_per_s=received / max(d["seconds"], 1e-9), requests=received,
                    errors=int(d["events"]) - received, elapsed_s=d["seconds"],
                    cpu_s_per_1000=d["cpu_s_per_1000"], peak_rss_mb=d["peak_rss_mb"],
                    extra={"cpu_s": d["cpu_s"]}))
            else:
                self.add(Row(
                    scenario="webhook_steady", backend=backend, system="openpse",
                    mode=f"open {d['rate_per_s']:g}/s, 1 in-process job", unit="deliveries",
                    throughput_per_s=d["deliveries_per_s"], requests=received,
                    errors=int(d["events"]) - received, elapsed_s=d["seconds"],
                    p50_ms=d["enqueue_to_2xx_ms_p50"], p95_ms=d["enqueue_to_2xx_ms_p95"],
                    p99_ms=d["enqueue_to_2xx_ms_p99"], max_ms=d["enqueue_to_2xx_ms_max"],
                    cpu_s_per_1000=d["cpu_s_per_1000"], peak_rss_mb=d["peak_rss_mb"],
                    extra={"cpu_s": d["cpu_s"], "latency": "enqueue (commit) to receiver 2xx"}))

    # the bare prototype

    def prototype(self, backend: str) -> None:
        url = self.fresh_db(backend, "proto")
        port = free_port()
        log = self._dir("prototype") / f"{backend}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.prototype", "serve", "--backend", backend,
                 "--database-url", url, "--port", str(port), "--access-key", PROTO_KEY,
                 "--secret", PROTO_SECRET], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http_ok(base + "/healthz", proc, log=log)
            w = Workload("create_payment", Auth.pse(PROTO_KEY, PROTO_SECRET), expect=(201,))
            res, sampler = self.load(base, w, proc.pid, url)
            row = self.add_load_row("prototype_create_confirm", backend, "prototype", "payments",
                                    res, sampler, tree_peak_rss_mb(proc.pid))
            row.mode += ", asyncpg pool 10" if backend == "postgresql" else ", 1 writer thread"
        finally:
            stop_process(proc)
            self.drop_db(url)

    # the database floor

    def floor_db(self, backend: str) -> None:
        if backend == "postgresql":
            self._pgbench()
        else:
            self._sqlite_floor()

    def _pgbench(self) -> None:
        exe = shutil.which("pgbench") or next(
            (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None)
        if exe is None:
            self.report.skip("floor_db", "postgresql", "pgbench is not installed "
                             "(apt-get install postgresql-contrib or postgresql-client)")
            return
        url = self.fresh_db("postgresql", "pgbench")
        try:
            asyncio.run(create_schema_pg(url))
            work = self._dir("pgbench")
            script = work / "payment.sql"
            script.write_text(pgbench_script())
            from urllib.parse import urlsplit

            u = urlsplit(url)
            env = dict(os.environ)
            if u.password:
                env["PGPASSWORD"] = u.password
            clients = self.cfg.pgbench_clients
            seconds = max(1, round(self.cfg.duration_s))
            prefix = work / f"log{time.monotonic_ns()}"
            cmd = [exe, "-n", "-M", "prepared", "-f", str(script), "-c", str(clients), "-j", "2",
                   "-T", str(seconds), "-l", "--log-prefix", str(prefix),
                   "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
                   "-U", u.username or "postgres", u.path.lstrip("/")]
            watcher = PGCpuWatcher(self._dbname(url))
            watcher.start()
            with open(work / "stdout.txt", "wb") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=work)
                _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            db_cpu = watcher.stop()
            text = (work / "stdout.txt").read_text()
            if proc.returncode != 0:
                raise RuntimeError(f"pgbench exited {proc.returncode}: {text[-1500:]}")
            tps = next(float(line.split("=")[1].split()[0]) for line in text.splitlines()
                       if line.startswith("tps ="))
            failed = next((int(line.split(":")[1].split()[0]) for line in text.splitlines()
                           if line.startswith("number of failed transactions")), 0)
            lat: list[float] = []
            for f in work.glob(prefix.name + "*"):
                for line in f.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 3:
                        lat.append(int(parts[2]) / 1000.0)
            lat.sort()
            n = max(1, len(lat))
            self.add(Row(
                scenario="floor_db", backend="postgresql", system="pgbench",
                mode=f"{clients} clients, prepared, 10 statements/tx", unit="tx",
                throughput_per_s=tps, requests=len(lat), errors=failed, elapsed_s=seconds,
                p50_ms=percentile(lat, 0.5), p95_ms=percentile(lat, 0.95),
                p99_ms=percentile(lat, 0.99), max_ms=lat[-1] if lat else 0.0,
                cpu_s_per_1000=db_cpu / n * 1000, db_cpu_s_per_1000=db_cpu / n * 1000,
                peak_rss_mb=usage.ru_maxrss / 1024,
                gen_cpu_us_per_req=(usage.ru_utime + usage.ru_stime) / n * 1e6,
                extra={"db_cpu_s": db_cpu, "note": "CPU = PostgreSQL's; RSS = pgbench's"}))
        finally:
            self.drop_db(url)

    def _sqlite_floor(self) -> None:
        url = f"sqlite:///{self._dir('sqlite-floor')}/floor.db"
        res = subprocess.run([sys.executable, "-m", "bench.prototype", "sqlite-floor",
                              "--database-url", url, "--duration", str(self.cfg.duration_s)],
                             capture_output=True, text=True, cwd=ROOT,
                             timeout=SUBPROCESS_TIMEOUT_S)
        if res.returncode != 0:
            raise RuntimeError(f"sqlite-floor exited {res.returncode}: {res.stderr[-1500:]}")
        d = json.loads(res.stdout.strip().splitlines()[-1])
        n = max(1, d["transactions"])
        self.add(Row(
            scenario="floor_db", backend="sqlite", system="sqlite3",
            mode="1 writer, WAL, synchronous=FULL, 10 statements/tx", unit="tx",
            throughput_per_s=d["tps"], requests=d["transactions"], errors=0,
            elapsed_s=d["elapsed_s"], p50_ms=d["p50_ms"], p95_ms=d["p95_ms"],
            p99_ms=d["p99_ms"], max_ms=d["max_ms"], cpu_s_per_1000=d["cpu_s"] / n * 1000,
            peak_rss_mb=d["peak_rss_mb"]))

    # the peer

    def run_peer(self) -> None:
        want = [s for s in self.cfg.scenarios if s in PEER_SCENARIOS]
        if not want:
            return
        if self.cfg.peer == "off":
            for s in want:
                self.report.skip(s, "memory", "--no-peer")
            return
        log = self._dir("localstripe") / "localstripe.log"
        if not peer.venv_ready():
            if self.cfg.peer == "auto":
                for s in want:
                    self.report.skip(s, "memory", f"localstripe's venv ({peer.venv_dir()}) is "
                                     "not present and --smoke does not install it (that needs "
                                     "PyPI); run once without --smoke or with --install-peer")
                return
            print(f"  installing localstripe=={peer.LOCALSTRIPE_VERSION} into "
                  f"{peer.venv_dir()}...", flush=True)
            try:
                peer.ensure_venv(log)
            except Exception as exc:
                for s in want:
                    self.report.skip(s, "memory", f"could not install localstripe: {exc!r}")
                return
        ls = peer.LocalStripe(log)
        try:
            ls.start()
            auth = Auth.bearer(peer.API_KEY)
            ids: list[str] = []
            create = Workload("stripe_create_confirm", auth, collect_ids=True, id_prefix="pi_")
            res, sampler = self.load(ls.base_url, create, ls.pid, "")
            ids.extend(res.ids)
            if "peer_create_confirm" in want:
                row = self.add_load_row("peer_create_confirm", "memory", "localstripe", "flows",
                                        res, sampler, ls.peak_rss_mb())
                row.mode += (f", {res.rate_start_per_s:.1f}/s first fifth → "
                             f"{res.rate_end_per_s:.1f}/s last fifth")
                self.report.notes.append(
                    f"localstripe create+confirm: {res.rate_start_per_s:.1f} flows/s over the "
                    f"first fifth of the phase, {res.rate_end_per_s:.1f}/s over the last fifth "
                    f"({res.requests} flows measured; it pickles its whole state to disk after "
                    "every write, so it slows as state grows)")
            for scenario, w in (("peer_refund", Workload("stripe_refund", auth,
                                                         ids=tuple(ids or ["pi_missing"]))),
                                ("peer_get", Workload("stripe_get", auth,
                                                      ids=tuple(ids or ["pi_missing"])))):
                if scenario in want:
                    res, sampler = self.load(ls.base_url, w, ls.pid, "")
                    self.add_load_row(scenario, "memory", "localstripe",
                                      "refunds" if scenario == "peer_refund" else "requests",
                                      res, sampler, ls.peak_rss_mb())
        finally:
            ls.stop()

    # the whole run

    def comparisons(self) -> None:
        rep = self.report
        for b in self.cfg.backends:
            rep.compare(b, "create+confirm", "create_confirm", "prototype_create_confirm", b,
                        f"prototype ({b})")
            rep.compare(b, "create+confirm", "create_confirm", "floor_db", b,
                        "pgbench payment tx" if b == "postgresql" else "sqlite3 payment tx")
            rep.compare(b, "create+confirm", "create_confirm", "floor_healthz", b,
                        "/healthz, same server")
            rep.compare(b, "create+confirm", "create_confirm", "peer_create_confirm", "memory",
                        "localstripe")
            rep.compare(b, "refund", "refund", "peer_refund", "memory", "localstripe")
            rep.compare(b, "get payment", "get_payment", "peer_get", "memory", "localstripe")
            rep.compare(b, "create+confirm after bulk load", "scale_create_confirm",
                        "scale_create_confirm_empty", b, "create+confirm, empty db, alternating")

    def run(self) -> Report:
        cfg = self.cfg
        if "postgresql" in cfg.backends:
            try:
                self.pg_version = self.pg.server_version()
            except Exception as exc:
                cfg.backends.remove("postgresql")
                for scenario in cfg.scenarios:
                    if scenario not in PEER_SCENARIOS:
                        self.report.skip(scenario, "postgresql",
                                         f"failed: PostgreSQL at {cfg.pg_url} is unreachable "
                                         f"({exc!r}); --pg-url points elsewhere")
        self.report.machine = machine_header(self.pg_version)
        print(f"OpenPSE benchmark suite ({cfg.profile}): backends {', '.join(cfg.backends)}; "
              f"scenarios: {', '.join(cfg.scenarios)}", flush=True)
        try:
            for backend in cfg.backends:
                print(f"== {backend}", flush=True)
                self.run_openpse(backend)
                if self.selected & {"webhook_backlog", "webhook_steady"}:
                    self.guarded("webhooks", backend, partial(self.webhooks, backend))
                if "prototype_create_confirm" in self.selected:
                    self.guarded("prototype_create_confirm", backend,
                                 partial(self.prototype, backend))
                if "floor_db" in self.selected:
                    self.guarded("floor_db", backend, partial(self.floor_db, backend))
            if self.selected & PEER_SCENARIOS:
                print("== peer (localstripe)", flush=True)
                self.guarded("peer", "memory", self.run_peer)
        finally:
            self.pg.drop_all()
            if not cfg.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
        self.report.machine["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
        self.comparisons()
        gen = [r.gen_cpu_us_per_req for r in self.report.rows
               if r.gen_cpu_us_per_req and r.system != "pgbench"]
        if gen:
            self.report.notes.append(
                f"load generator CPU per request (its {cfg.processes} processes' user+system "
                f"time over the measured phase / requests): {min(gen):.0f}-{max(gen):.0f} µs "
                "(lowest at high request rates, where one event-loop wake-up serves many "
                "responses)")
        self.report.notes.append(
            "CPU s/1k ops: user+system CPU of the server process and all its children per 1,000 "
            "operations in the measured phase; DB CPU: PostgreSQL's own processes for that "
            "database plus its shared ones; peak RSS: sum of VmHWM over the server's processes "
            "(since it started); RSS growth: their VmRSS at the measured phase's end minus at "
            "its start (after the warm-up), where memory kept per request would show")
        return self.report


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    t0 = time.perf_counter()
    report = Suite(cfg).run()
    report.extra["wall_s"] = time.perf_counter() - t0
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + cfg.profile
    json_path, md_path = report.write(cfg.out, stem)
    print()
    print(report.markdown())
    print(f"wrote {md_path} and {json_path} ({report.extra['wall_s']:.0f} s)")
    failed = [s for s in report.skipped if s["reason"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
