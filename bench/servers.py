"""What the benchmark suite starts and measures: `openpse serve` on a fresh database, scratch
PostgreSQL databases, and the CPU and memory of a process tree read from ``/proc``.

CPU is user+system time (``utime + stime`` in ``/proc/<pid>/stat``) summed over a server's
process and all its live descendants (``serve --workers N`` forks N children). Peak RSS is
``VmHWM`` from ``/proc/<pid>/status`` summed over the same processes: the most memory the
server as a whole has held at once since it started, counting each process's own peak.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from tests.support.servers import free_port, openpse_bin

__all__ = [
    "MASTER_KEY",
    "OpenPSEServer",
    "PGCpuWatcher",
    "ProcSampler",
    "ScratchPG",
    "free_port",
    "openpse_bin",
    "pg_cpu_s",
    "tree_cpu_s",
    "tree_peak_rss_mb",
    "tree_rss_mb",
    "wait_http_ok",
]

MASTER_KEY: Final = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 ASCII bytes
STARTUP_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PG_POLL_S: Final = 0.2


def wait_http_ok(url: str, proc: subprocess.Popen[bytes] | None = None,
                 timeout_s: float = STARTUP_TIMEOUT_S, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}\n"
                               + tail)
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


# --- /proc ---------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: split after its closing one
    return raw[raw.rindex(")") + 2:].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _cpu_of(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields from index 0 = stat field 3 (state); utime is field 14, stime 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(root: int) -> float:
    return sum(_cpu_of(pid) for pid in tree_pids(root))


def _status_kb(pid: int, name: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_rss_mb(root: int) -> float:
    return sum(_status_kb(pid, "VmHWM") for pid in tree_pids(root)) / 1024


def tree_rss_mb(root: int) -> float:
    """The process tree's resident memory now (``VmRSS`` summed)."""
    return sum(_status_kb(pid, "VmRSS") for pid in tree_pids(root)) / 1024


def _pg_processes(dbname: str | None) -> dict[int, float]:
    """CPU seconds of the PostgreSQL server processes that work for ``dbname``: its backends and
    autovacuum workers, plus the shared ones (postmaster, WAL writer, checkpointer, ...).
    Backends of other databases (someone else's tests) are left out. ``None``: all of them."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if dbname is not None and "postgres:" in title:
            serves_a_db = "(" in title or "[local]" in title or "autovacuum worker" in title
            if serves_a_db and f" {dbname} " not in f"{title} ":
                continue
        out[int(entry)] = _cpu_of(int(entry))
    return out


def pg_cpu_s(dbname: str | None = None) -> float:
    return sum(_pg_processes(dbname).values())


class PGCpuWatcher:
    """PostgreSQL CPU spent for one database across a phase. Polls, so that backends which exit
    before the end of the phase (pgbench's) still count, up to the last poll."""

    def __init__(self, dbname: str | None, poll_s: float = PG_POLL_S) -> None:
        self.dbname, self.poll_s = dbname, poll_s
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_s = 0.0

    def _poll(self) -> None:
        self.last.update(_pg_processes(self.dbname))

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()

    def start(self) -> None:
        self.base = _pg_processes(self.dbname)
        self.last = dict(self.base)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        self.cpu_s = sum(v - self.base.get(pid, 0.0) for pid, v in self.last.items())
        return self.cpu_s


@dataclass
class ProcSampler:
    """CPU of a process tree (and of PostgreSQL for ``pg_db``) across a measured phase, and how
    much its resident memory grew over it (after the warm-up: a leak of 1 KB a request shows
    as ≈ 5 MB over 10 s at 500/s)."""

    root: int
    pg_db: str | None = None
    cpu0: float = 0.0
    cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    rss0_mb: float = 0.0
    rss_growth_mb: float = 0.0
    _pg: PGCpuWatcher | None = None

    def start(self) -> None:
        if self.pg_db is not None:
            self._pg = PGCpuWatcher(self.pg_db)
            self._pg.start()
        self.rss0_mb = tree_rss_mb(self.root)
        self.cpu0 = tree_cpu_s(self.root)

    def stop(self) -> None:
        self.cpu_s = tree_cpu_s(self.root) - self.cpu0
        self.db_cpu_s = self._pg.stop() if self._pg is not None else 0.0
        self.rss_growth_mb = tree_rss_mb(self.root) - self.rss0_mb


# --- PostgreSQL scratch databases ----------------------------------------------------------------


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class ScratchPG:
    """Creates and drops uniquely named databases on a PostgreSQL server, connecting to its
    ``postgres`` maintenance database (never to anyone else's)."""

    base_url: str
    created: list[str] = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return _with_db(self.base_url, "postgres")

    def _admin(self, sql: str) -> Any:
        import asyncio

        import asyncpg

        async def go() -> Any:
            conn = await asyncpg.connect(self.admin_url, timeout=10)
            try:
                if sql.lstrip().upper().startswith("SELECT"):
                    return await conn.fetchval(sql)
                return await conn.execute(sql)
            finally:
                await conn.close()

        return asyncio.run(go())

    def create(self, purpose: str) -> str:
        name = f"openpse_bench_{purpose}_{secrets.token_hex(4)}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _with_db(self.base_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            try:
                self.drop(_with_db(self.base_url, name))
            except Exception as exc:
                print(f"warning: could not drop {name}: {exc}", file=sys.stderr)

    def server_version(self) -> str:
        return str(self._admin("SELECT current_setting('server_version')"))


# --- openpse serve -------------------------------------------------------------------------------


def openpse_env(database_url: str, data_dir: Path) -> dict[str, str]:
    return dict(os.environ, OPENPSE_DATABASE_URL=database_url, OPENPSE_MASTER_KEY=MASTER_KEY,
                OPENPSE_DATA_DIR=str(data_dir), OPENPSE_RATE_LIMIT="0",
                OPENPSE_LOG_LEVEL="WARNING", OPENPSE_ALLOW_LOCAL_WEBHOOKS="1")


@dataclass
class OpenPSEServer:
    """``openpse migrate``, ``openpse merchant create --json``, then ``openpse serve
    --no-worker [--workers N]`` on a free port."""

    database_url: str
    workers: int = 1
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="openpse-bench-")))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    access_key: str = ""
    secret: str = ""
    merchant_id: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return openpse_env(self.database_url, self.data_dir)

    @property
    def log(self) -> Path:
        return self.data_dir / "server.log"

    def prepare(self) -> OpenPSEServer:
        exe = openpse_bin()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([exe, "migrate"], env=self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"openpse migrate failed: {res.stderr[-2000:]}")
        res = subprocess.run([exe, "merchant", "create", "--name", "Bench", "--json"],
                             env=self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"openpse merchant create failed: {res.stderr[-2000:]}")
        creds = json.loads(res.stdout)
        self.access_key, self.secret = creds["access_key"], creds["secret"]
        self.merchant_id = creds["merchant_id"]
        return self

    def start(self) -> OpenPSEServer:
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [openpse_bin(), "serve", "--port", str(self.port), "--no-worker",
                 "--workers", str(self.workers)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http_ok(self.base_url + "/healthz", self.proc, log=self.log)
        return self

    def peak_rss_mb(self) -> float:
        return tree_peak_rss_mb(self.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (then SIGKILL) a process we started, and its process group."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)
