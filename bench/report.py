"""The suite's results: one row per measured scenario, the comparisons (OpenPSE / prototype,
floor, peer), the machine header, written as Markdown and as JSON with the same data."""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Comparison", "Report", "Row", "machine_header"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One measured phase. Latencies are None where a scenario has none (a backlog drain, a
    CLI command); everything else is a finite number."""

    scenario: str
    backend: str  # sqlite | postgresql | memory (localstripe)
    system: str  # openpse | prototype | pgbench | sqlite3 | localstripe
    mode: str  # "closed c=32", "open 30/s", "drain 5000", "CLI"
    unit: str  # what throughput counts: payments, requests, deliveries, postings, tx
    throughput_per_s: float
    requests: int
    errors: int
    elapsed_s: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    cpu_s_per_1000: float = 0.0  # the server's user+system CPU per 1,000 operations
    db_cpu_s_per_1000: float | None = None  # PostgreSQL's, for that database
    peak_rss_mb: float = 0.0  # sum of VmHWM over the server's processes
    # VmRSS over the server's processes at the measured phase's end minus at its start (after
    # the warm-up): memory that grows with the requests served (None: not measured)
    rss_growth_mb: float | None = None
    gen_cpu_us_per_req: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    vs: str = ""  # the ratios, as shown in the Markdown table


@dataclass
class Comparison:
    backend: str
    what: str
    openpse: float
    other_name: str
    other: float

    @property
    def ratio(self) -> float:
        return self.openpse / self.other if self.other > 0 else 0.0


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                              cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def machine_header(pg_version: str | None) -> dict[str, Any]:
    """What the figures were measured on (read-only git commands only)."""
    commit = _run(["git", "rev-parse", "--short=12", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": _ram_gib(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version or "not used",
        "git_commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


# --- formatting ----------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if 0 < abs(v) < 0.1:
        return f"{v:.2g}"
    return f"{v:.{digits}f}"


def _ratio(v: float) -> str:
    return f"{v:.3f}" if v < 0.1 else f"{v:.2f}"


def _clean(value: Any) -> Any:
    """Rounded, and never NaN or infinite (json.dumps(allow_nan=False) checks again)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a non-finite number in the results")
        return round(value, 3) if abs(value) >= 1 else float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def find(self, scenario: str, backend: str) -> Row | None:
        for row in self.rows:
            if row.scenario == scenario and row.backend == backend:
                return row
        return None

    def skip(self, scenario: str, backend: str, reason: str) -> None:
        self.skipped.append({"scenario": scenario, "backend": backend, "reason": reason})
        print(f"  skipped {scenario} ({backend}): {reason}", flush=True)

    def compare(self, backend: str, what: str, mine: str, other: str, other_backend: str,
                other_name: str) -> None:
        a, b = self.find(mine, backend), self.find(other, other_backend)
        if a is None or b is None or b.throughput_per_s <= 0:
            return
        c = Comparison(backend, what, a.throughput_per_s, other_name, b.throughput_per_s)
        self.comparisons.append(c)
        a.vs = (a.vs + "; " if a.vs else "") + f"{_ratio(c.ratio)}x {other_name}"

    def as_json(self) -> dict[str, Any]:
        return _clean({
            "machine": self.machine, "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "comparisons": [{**asdict(c), "ratio": c.ratio} for c in self.comparisons],
            "skipped": self.skipped, "notes": self.notes, **self.extra,
        })

    def markdown(self) -> str:
        m = self.machine
        out = [
            "# OpenPSE benchmark results", "",
            f"- date (UTC): {m['date_utc']}; git commit: {m['git_commit']}",
            f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, kernel "
            f"{m['kernel']}; 1-minute load average {m['load_avg_1m_at_start']} before the run "
            "(above ~0.3: other work was competing with it), "
            f"{m.get('load_avg_1m_at_end', '?')} at its end (the run's own load included)",
            f"- software: Python {m['python']}, SQLite {m['sqlite']}, PostgreSQL "
            f"{m['postgresql']}",
            "- settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            "",
            "| scenario | backend | system | mode | throughput /s | p50 ms | p95 ms | p99 ms "
            "| max ms | errors | CPU s/1k ops | DB CPU s/1k | peak RSS MB | RSS growth MB "
            "| gen µs/req | vs |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            out.append(
                f"| {r.scenario} | {r.backend} | {r.system} | {r.mode} | "
                f"{_num(r.throughput_per_s)} {r.unit} | {_num(r.p50_ms)} | {_num(r.p95_ms)} | "
                f"{_num(r.p99_ms)} | {_num(r.max_ms)} | {r.errors} | "
                f"{_num(r.cpu_s_per_1000, 2)} | {_num(r.db_cpu_s_per_1000, 2)} | "
                f"{_num(r.peak_rss_mb, 0)} | {_num(r.rss_growth_mb, 1)} | "
                f"{_num(r.gen_cpu_us_per_req, 0)} | {r.vs} |")
        if self.comparisons:
            out += ["", "## OpenPSE beside the floor, the prototype and the peer", "",
                    "| backend | OpenPSE | /s | against | /s | ratio |",
                    "|---|---|---:|---|---:|---:|"]
            for c in self.comparisons:
                out.append(f"| {c.backend} | {c.what} | {_num(c.openpse)} | {c.other_name} | "
                           f"{_num(c.other)} | {_ratio(c.ratio)} |")
        if self.skipped:
            out += ["", "## Skipped", ""]
            out += [f"- {s['scenario']} ({s['backend']}): {s['reason']}" for s in self.skipped]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def write(self, out_dir: Path, stem: str) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.as_json(), indent=2, allow_nan=False)
        md = self.markdown()
        json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
        json_path.write_text(data + "\n")
        md_path.write_text(md)
        (out_dir / "latest.json").write_text(data + "\n")
        (out_dir / "latest.md").write_text(md)
        return json_path, md_path
