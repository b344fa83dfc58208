"""The redacted request log the dashboard and ``openpse logs tail`` read.

Rows are queued in memory and written in batches by one background task, so logging adds no
write transaction to the request path. A crash loses at most one flush interval of log rows
(never money or events, which commit with their state change).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import insert

from openpse.storage.db import Database
from openpse.storage.tables import request_logs

__all__ = ["RequestLogWriter"]

FLUSH_INTERVAL_S = 0.2
MAX_BATCH_ROWS = 500
MAX_QUEUE_ROWS = 50_000


class RequestLogWriter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUE_ROWS)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def submit(self, row: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1  # bounded memory beats an unbounded backlog

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            with contextlib.suppress(Exception):
                await self.flush()

    async def flush(self) -> int:
        rows: list[dict[str, Any]] = []
        while not self._queue.empty() and len(rows) < MAX_BATCH_ROWS:
            rows.append(self._queue.get_nowait())
        if not rows:
            return 0
        try:
            async with self._db.transaction() as tx:
                await tx.execute(insert(request_logs), rows)
        except Exception:
            # One bad row must not lose the batch: write them one by one, count the refusals.
            for row in rows:
                try:
                    async with self._db.transaction() as tx:
                        await tx.execute(insert(request_logs), [row])
                except Exception:
                    self.dropped += 1
        return len(rows)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while await self.flush():
            pass
