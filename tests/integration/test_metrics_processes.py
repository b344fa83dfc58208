"""/metrics over several processes (docs/operations.md; openpse/process_metrics.py).

``openpse serve --workers 2`` answers on one port from two processes: whichever process a
scrape reaches, /metrics counts every response both gave (exactly), and a separate ``openpse
worker`` sharing the metrics directory shows its webhook deliveries through the API's
/metrics, although the API processes run no worker themselves."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import new_merchant
from tests.support.ledger import VISA, payment_body
from tests.support.receiver import Receiver
from tests.support.servers import ServerProcess, openpse_bin
from tests.support.webhooks import fresh_db, isolated_services

RESPONSES = "openpse_http_responses_total"


def _scrape(base_url: str, name: str, **labels: str) -> float:
    """One /metrics request on a connection of its own; the sum of ``name``'s samples."""
    res = httpx.get(base_url + "/metrics", headers={"connection": "close"})
    assert res.status_code == 200
    return sum(s.value for fam in text_string_to_metric_families(res.text)
               for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _per_pid(base_url: str, name: str) -> dict[str, float]:
    """``name``'s samples by their ``pid`` label ("" when there is none)."""
    res = httpx.get(base_url + "/metrics", headers={"connection": "close"})
    assert res.status_code == 200
    return {s.labels.get("pid", ""): s.value
            for fam in text_string_to_metric_families(res.text) for s in fam.samples
            if s.name == name}


def _memory_of(base_url: str, processes: int) -> dict[str, float]:
    """Each process's published resident memory, once ``processes`` of them published."""
    deadline = time.monotonic() + 20
    while True:
        rss = _per_pid(base_url, "process_resident_memory_bytes")
        if len(rss) >= processes or time.monotonic() > deadline:
            return rss
        time.sleep(0.2)


def _ok_per_process(metrics_dir: Path) -> dict[str, float]:
    """Each process's own count of 200 answers, read from its file in the directory."""
    counts = {}
    for f in sorted(metrics_dir.glob("counter_*.db")):
        samples = [s for m in MultiProcessCollector.merge([str(f)]) for s in m.samples
                   if s.name == RESPONSES and s.labels.get("status") == "200"]
        counts[f.stem] = sum(s.value for s in samples)
    return counts


def _spread_health_checks(srv: ServerProcess, metrics_dir: Path) -> int:
    """/healthz on fresh connections, 8 at a time, until both API processes answered some
    (the kernel hands each connection to one of them); how many were made."""
    made = 0

    def one(_: int) -> int:
        return httpx.get(srv.base_url + "/healthz", headers={"connection": "close"}).status_code

    deadline = time.monotonic() + 20
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline:
            statuses = list(pool.map(one, range(40)))
            assert statuses == [200] * 40
            made += 40
            if sum(1 for n in _ok_per_process(metrics_dir).values() if n > 0) >= 2:
                return made
    raise AssertionError(f"one process answered all {made} requests")


def _exact_totals(srv: ServerProcess, metrics_dir: Path) -> None:
    before = _scrape(srv.base_url, RESPONSES, status="200")
    made = _spread_health_checks(srv, metrics_dir)
    # every scrape sees both processes' answers: those made, and the scrapes before it
    for k in range(1, 6):
        assert _scrape(srv.base_url, RESPONSES, status="200") == before + made + k


@pytest.fixture
def two_api_processes(migrated_db: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    srv = ServerProcess(database_url=migrated_db, data_dir=tmp_path / "data",
                        log_file=tmp_path / "server.log", env_extra={"TMPDIR": str(tmp_path)},
                        args=["--workers", "2", "--no-worker"])
    srv.start()
    try:
        yield srv, tmp_path
    finally:
        srv.stop()


def test_two_api_processes_count_every_answer_whichever_is_scraped(
        two_api_processes: tuple[ServerProcess, Path]) -> None:
    srv, tmp = two_api_processes
    made_dirs = list(tmp.glob("openpse-metrics-*"))  # serve made one for its processes
    assert len(made_dirs) == 1
    _exact_totals(srv, made_dirs[0])
    # the process collector cannot see the other process: each publishes its own memory
    # (a series per pid) and CPU (summed)
    rss = _memory_of(srv.base_url, 2)
    assert len(rss) == 2 and all(pid.isdigit() for pid in rss), rss
    assert all(30e6 < v < 2e9 for v in rss.values()), rss
    assert 0 < _per_pid(srv.base_url, "process_cpu_seconds_total")[""] < 600
    srv.stop()
    assert not made_dirs[0].exists()  # and removed it when it stopped


async def test_a_separate_worker_shows_its_deliveries_through_the_apis_metrics(
        tmp_path: Path) -> None:
    # a database of its own: the session's server runs a worker that would deliver first
    async with fresh_db(tmp_path) as url, isolated_services(url, tmp_path) as services:
        await _worker_beside_two_api_processes(url, services, tmp_path)


async def _worker_beside_two_api_processes(url: str, services: Any, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    srv = ServerProcess(database_url=url, data_dir=tmp_path / "data",
                        log_file=tmp_path / "server.log", env_extra=shared,
                        args=["--workers", "2", "--no-worker"])
    srv.start()
    worker = subprocess.Popen([openpse_bin(), "worker"],
                              env=srv.env(), stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "worker.log", "ab"))
    try:
        _exact_totals(srv, metrics_dir)
        rss = _memory_of(srv.base_url, 3)  # the worker's too
        assert str(worker.pid) in rss and len(rss) == 3, (worker.pid, rss)
        delivered = 'openpse_webhook_deliveries_total'
        assert _scrape(srv.base_url, delivered, outcome="succeeded") == 0
        kit = await new_merchant(services, srv.base_url)
        raw = kit.raw()
        with Receiver() as r:
            ep = raw.post("/v1/webhook_endpoints",
                          {"url": r.url("/hook"), "enabled_events": ["payment.succeeded"]})
            assert ep.status_code == 201, ep.text
            res = raw.post("/v1/payments", payment_body(VISA, amount=1500, currency="JPY"))
            assert res.status_code == 201, res.text
            r.wait_for(lambda: len(r.at("/hook")) >= 1, timeout_s=15)
            deadline = time.monotonic() + 10  # counted once the attempt is recorded
            while (_scrape(srv.base_url, delivered, outcome="succeeded") < 1
                   and time.monotonic() < deadline):
                time.sleep(0.1)
        assert _scrape(srv.base_url, delivered, outcome="succeeded") == 1
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        srv.stop()
