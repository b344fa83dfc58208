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
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["ENV", "enabled", "mark_exit_at_end", "registry_to_scrape", "shared_dir_for"]

ENV = "PROMETHEUS_MULTIPROC_DIR"


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
