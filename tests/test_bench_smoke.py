"""The benchmark suite's smoke run: ``python -m bench.run --smoke`` on this run's backend
(OPENPSE_TEST_DB) runs every scenario tiny, and the JSON it writes must be well-formed.

Nothing here asserts a timing threshold, ever: only that each scenario ran, answered without
errors, and reported sane numbers (throughput > 0, p50 <= p95 <= p99 <= max, CPU and RSS > 0).
localstripe (the peer) runs only if its own venv is already there: the smoke does not install it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKEND, PG_BASE_URL

pytestmark = pytest.mark.bench_smoke

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT_S = 300


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"{name} in the results JSON")


def _finite(value: Any, where: str = "$") -> None:
    if isinstance(value, float):
        assert math.isfinite(value), where
    elif isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


def test_signing_matches_the_contract_examples() -> None:
    """The generator signs exactly as CONTRACT §2's worked examples say."""
    import hashlib
    import hmac

    from bench.loadgen import canonical_query, string_to_sign

    secret = b"sk_test_5f3c9a1e7b2d4c6a8e0f1a3b5c7d9e1f"
    ts, nonce = "1763773200", "n0nce-AbC_123456789"
    query = canonical_query("status=succeeded&limit=2&merchant_order_id=注文 #42")
    assert query == "limit=2&merchant_order_id=%E6%B3%A8%E6%96%87%20%2342&status=succeeded"
    sts = string_to_sign("GET", "/v1/payments", query, ts, nonce, b"")
    assert hmac.new(secret, sts.encode(), hashlib.sha256).hexdigest() == (
        "6434311bcf95503f20276beac19640b94243b1aaad4a01f99f15195f46ccb8c4")
    body = (b'{"amount":2000,"currency":"JPY","merchant_order_id":"ord-1001","payment_method":'
            b'{"type":"card","card":{"number":"4242424242424242","exp_month":12,'
            b'"exp_year":2034,"cvc":"123"}},"confirm":true}')
    sts = string_to_sign("POST", "/v1/payments", "", ts, nonce, body)
    assert hmac.new(secret, sts.encode(), hashlib.sha256).hexdigest() == (
        "17db9f2a078fea38f7006b30349e53ac01bc7968b0d0bf7b9dd7cb42fb242b51")


def test_bench_smoke(db_url: str, tmp_path: Path) -> None:
    """``db_url`` only gives this test the suite's PostgreSQL reachability rules (skip outside
    CI, fail under CI); the benchmark makes and drops its own scratch databases."""
    from bench import peer_localstripe
    from bench.run import PEER_SCENARIOS, SCENARIOS

    peer_present = peer_localstripe.venv_ready()
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.run", "--smoke", "--backends", BACKEND,
           "--out", str(out), "--pg-url", PG_BASE_URL]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    text = (out / "latest.json").read_text()
    data = json.loads(text, parse_constant=_reject_constant)
    _finite(data)
    assert "| scenario | backend |" in (out / "latest.md").read_text()
    assert "| scenario | backend |" in res.stdout  # the Markdown is printed too
    machine = data["machine"]
    for key in ("cpu_model", "cores", "ram_gib", "python", "postgresql", "date_utc",
                "git_commit"):
        assert machine[key] not in (None, ""), key

    rows = {r["scenario"]: r for r in data["rows"]}
    skipped = {s["scenario"]: s["reason"] for s in data["skipped"]}
    for scenario in SCENARIOS:
        if scenario in PEER_SCENARIOS and not peer_present:
            assert "not present" in skipped.get(scenario, ""), (scenario, skipped)
            continue
        assert scenario in rows, (scenario, skipped.get(scenario))
        row = rows[scenario]
        assert row["backend"] == (BACKEND if scenario not in PEER_SCENARIOS else "memory")
        assert row["throughput_per_s"] > 0, row
        assert row["requests"] > 0, row
        assert row["errors"] == 0, row
        assert row["cpu_s_per_1000"] > 0, row
        assert row["peak_rss_mb"] > 0, row
        if "gen_processes" in row["extra"]:  # the load generator's phase: growth measured
            assert isinstance(row["rss_growth_mb"], float), row
            assert abs(row["rss_growth_mb"]) < row["peak_rss_mb"], row
        lat = [row[k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
        if scenario not in ("webhook_backlog", "ledger_verify"):
            assert None not in lat, row
        present = [x for x in lat if x is not None]
        assert all(x >= 0 for x in present), row
        assert present == sorted(present), row
    assert not [s for s in data["skipped"] if s["scenario"] not in PEER_SCENARIOS]
    # the latency target's open loop ran at its own rate, and PostgreSQL's row says whether
    # the p99 target was met
    target = rows["create_confirm_target"]
    assert target["mode"].startswith("open 100/s"), target
    if BACKEND == "postgresql":
        verdict = "p99 target ≤ 50 ms at 100/s: "
        assert target["vs"] in (verdict + "met", verdict + "not met"), target
    else:
        assert target["vs"] == "", target

    ratios = {(c["what"], c["other_name"]): c["ratio"] for c in data["comparisons"]}
    assert ratios[("create+confirm", f"prototype ({BACKEND})")] > 0
    # the data-scale figure is set against an empty database measured in alternating phases
    empty, loaded = rows["scale_create_confirm_empty"], rows["scale_create_confirm"]
    assert empty["requests"] > 0 and empty["errors"] == 0, empty
    phases = (empty["extra"]["phases_per_s"], loaded["extra"]["phases_per_s"])
    assert len(phases[0]) == len(phases[1]) >= 2 and min(phases[0] + phases[1]) > 0, phases
    assert all(r == pytest.approx(b / a, rel=0.01) for r, a, b in zip(
        loaded["extra"]["paired_ratios"], *phases, strict=True)), loaded["extra"]
    scale = ratios[("create+confirm after bulk load", "create+confirm, empty db, alternating")]
    assert scale == pytest.approx(loaded["throughput_per_s"] / empty["throughput_per_s"],
                                  rel=1e-3)
    assert rows["create_confirm"]["vs"]


def test_ab_pairs_smoke(db_url: str, tmp_path: Path) -> None:
    """``bench/ab.py`` with this tree on both sides (``--base-tree``): each pair runs both at
    once on databases of their own (dropped after), checks that each imported its own tree's
    code, and reports ratios that are the quotients of the figures it reports."""
    out = tmp_path / "ab.json"
    cmd = [sys.executable, str(ROOT / "bench" / "ab.py"), "--base-tree", str(ROOT),
           "--database", BACKEND, "--pg-admin-url", PG_BASE_URL, "-n", "20",
           "--pairs", "2", "--json", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    data = json.loads(out.read_text(), parse_constant=_reject_constant)
    assert [p["first"] for p in data["pairs"]] == ["old", "new"]
    for p in data["pairs"]:
        assert p["old_cpu_ms"] > 0 and p["new_cpu_ms"] > 0, p
        assert p["cpu_ratio"] == pytest.approx(p["new_cpu_ms"] / p["old_cpu_ms"], abs=2e-3)
    assert data["cpu_ratio_geomean"] == pytest.approx(
        math.sqrt(data["pairs"][0]["cpu_ratio"] * data["pairs"][1]["cpu_ratio"]), abs=2e-3)
    assert "| pair | started first |" in res.stdout
