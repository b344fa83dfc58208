"""The background worker: a loop over jobs, each safe to run in any number of processes.

A job is an async callable ``job(now_s) -> int`` that does one bounded batch of work and returns
how much it did; the loop runs every job, sleeps only when none had work, and never lets one
failing job stop the others. Jobs claim work with row locks / ``SKIP LOCKED`` (PostgreSQL) or
the single writer (SQLite), so two workers never do the same piece twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import delete

from openpse.logs import get_logger
from openpse.services.context import Services
from openpse.storage.tables import idempotency_keys, nonces, request_logs

__all__ = ["Job", "Worker", "build_worker", "housekeeping_jobs"]

Job = Callable[[int], Awaitable[int]]
HOUSEKEEPING_EVERY_S = 60
log = get_logger("openpse.worker")


@dataclass
class Worker:
    services: Services
    jobs: dict[str, Job] = field(default_factory=dict)
    poll_interval_s: float = 0.5
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, name: str, job: Job) -> None:
        self.jobs[name] = job

    def stop(self) -> None:
        self._stop.set()

    async def run_once(self, now_s: int | None = None) -> int:
        done = 0
        for name, job in self.jobs.items():
            try:
                done += await job(now_s if now_s is not None else int(time.time()))
            except Exception:
                log.exception("job failed", job=name)
        return done

    async def run(self) -> None:
        log.info("worker started", jobs=sorted(self.jobs))
        try:
            while not self._stop.is_set():
                done = await self.run_once()
                if done == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.poll_interval_s)
        finally:
            await self._close_jobs()
        log.info("worker stopped")

    async def _close_jobs(self) -> None:
        """Graceful drain: a job with an ``aclose`` finishes what it has in flight."""
        for name, job in self.jobs.items():
            closer = getattr(job, "aclose", None)
            if closer is None:
                continue
            try:
                await closer()
            except Exception:
                log.exception("job failed to close", job=name)


def housekeeping_jobs(svc: Services) -> dict[str, Job]:
    last_run = [0]

    async def purge(now_s: int) -> int:
        if now_s - last_run[0] < HOUSEKEEPING_EVERY_S:
            return 0
        last_run[0] = now_s
        log_cutoff = now_s - svc.settings.request_log_retention_days * 86400
        async with svc.db.transaction() as tx:
            await tx.execute(delete(nonces).where(nonces.c.expires_at < now_s))
            await tx.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at < now_s))
            await tx.execute(delete(request_logs).where(request_logs.c.created < log_cutoff))
        return 0  # housekeeping never keeps the loop from sleeping

    return {"housekeeping": purge}


def build_worker(svc: Services) -> Worker:
    w = Worker(svc, poll_interval_s=svc.settings.worker_poll_interval_s)
    for name, job in housekeeping_jobs(svc).items():
        w.add(name, job)
    for name, job in feature_jobs(svc).items():
        w.add(name, job)
    return w


def feature_jobs(svc: Services) -> dict[str, Job]:
    """Jobs of the capabilities in this build (webhook delivery, expiries ...)."""
    jobs: dict[str, Job] = {}
    for module_name in ("openpse.services.jobs", "openpse.services.webhook_delivery"):
        try:
            module = __import__(module_name, fromlist=["jobs"])
        except ImportError:
            continue
        jobs.update(module.jobs(svc))
    return jobs
