"""Prometheus metrics summed over the processes of one host.

``openpse serve --workers N`` runs N API processes behind one port, and ``openpse worker``
processes run beside them. Each keeps its metrics in its own memory, so a scrape of ``/metrics``
would see whichever process the kernel handed the connection to: counters that jump between
processes' totals, and no webhook metrics at all from separate workers. prometheus_client's
multiprocess mode fixes that: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the library is
imported), every process writes its samples to files in that directory and ``/metrics``
reads them all back. Counters and histograms are summed over every process that ever ran
(a process that exited keeps its counts, so totals never go backwards); the webhook queue
gauges are a snapshot of the database that any worker may publish, so the most recent wins.

``serve --workers N`` (N > 1) makes a fresh directory of its own when the variable is not set
and removes it when it stops. To include separate ``openpse worker`` processes, set the same
``PROMETHEUS_MULTIPROC_DIR`` for all of them and empty it before they start (prometheus_client
reads stale files as live).

prometheus_client's process collector (``process_resident_memory_bytes``, CPU, ...) reads only
the process that answers the scrape, so multiprocess mode leaves it out. Each process then
publishes its own instead, every ``PUBLISH_EVERY_S`` (:func:`publish_forever`):
``process_resident_memory_bytes`` with a ``pid`` label per live process, and
``process_cpu_seconds_total`` summed over every process that ran.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["ENV", "PUBLISH_EVERY_S", "enabled", "mark_exit_at_end", "publish_forever",
           "publish_own", "registry_to_scrape", "shared_dir_for", "start_publishing"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_EVERY_S = 5.0


def enabled() -> bool:
    """Whether this process writes its metrics to the shared directory."""
    return bool(os.environ.get(ENV))


def registry_to_scrape(registry: CollectorRegistry) -> CollectorRegistry:
    """What ``/metrics`` shows: every process's samples from the shared directory when this
    process writes there and ``registry`` is the default one; ``registry`` itself otherwise (a
    single process, or an app built with a registry of its own, as tests do)."""
    if registry is not REGISTRY or not enabled():
        return registry
    from prometheus_client import multiprocess

    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


def mark_exit_at_end() -> None:
    """Drop this process's live gauges from the shared directory when it exits (its counters
    and histograms stay counted)."""
    if not enabled():
        return
    from prometheus_client import multiprocess

    pid = os.getpid()
    atexit.register(multiprocess.mark_process_dead, pid)


class _Own:
    """This process's memory and CPU metrics, made on first use (multiprocess mode only).
    Not registered in the default registry, whose process collector already owns these names:
    in multiprocess mode a metric's samples go to the shared directory whatever its registry,
    and ``/metrics`` reads them from there."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.rss = Gauge("process_resident_memory_bytes", "Resident memory size in bytes",
                         registry=None, multiprocess_mode="liveall")
        self.cpu = Counter("process_cpu_seconds_total",
                           "Total user and system CPU time spent in seconds", registry=None)
        self.cpu_seen = 0.0


_own: _Own | None = None
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def publish_own() -> None:
    """Write this process's resident memory and the CPU it used since the last call to the
    shared directory (nothing in a single process: the process collector shows them there)."""
    global _own
    if not enabled():
        return
    if _own is None:
        _own = _Own()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    if cpu > _own.cpu_seen:
        _own.cpu.inc(cpu - _own.cpu_seen)
        _own.cpu_seen = cpu
    try:
        with open("/proc/self/statm") as f:  # Linux: pages, second field resident
            _own.rss.set(int(f.read().split()[1]) * _PAGE_BYTES)
    except OSError:
        pass  # no /proc: the gauge stays unset


async def publish_forever(every_s: float = PUBLISH_EVERY_S) -> None:
    """:func:`publish_own` now and then every ``every_s`` seconds, until cancelled."""
    while True:
        publish_own()
        await asyncio.sleep(every_s)


def start_publishing() -> tuple[Any, Any]:
    """Startup and shutdown hooks running :func:`publish_forever` in the background while
    several processes share the directory (an API process's lifespan; ``openpse worker``
    around its jobs)."""
    tasks: list[asyncio.Task[None]] = []

    async def _start() -> None:
        if enabled():
            tasks.append(asyncio.get_running_loop().create_task(publish_forever()))

    async def _stop() -> None:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        tasks.clear()

    return _start, _stop


@contextmanager
def shared_dir_for(processes: int) -> Iterator[None]:
    """For ``serve --workers N``: a fresh directory for the N processes' metrics, set in the
    environment they inherit and removed afterwards, unless one is set already (then it is
    used as it is) or there is only one process (nothing to share)."""
    if enabled() or processes <= 1:
        yield
        return
    path = tempfile.mkdtemp(prefix="openpse-metrics-")
    os.environ[ENV] = path
    try:
        yield
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)
