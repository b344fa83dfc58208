"""The write lock between processes sharing one SQLite file, taken without blocking the loop.

SQLite has one write lock per database file. A process whose ``BEGIN IMMEDIATE`` finds it held
by another process waits in SQLite's busy handler, which *sleeps* (1, 2, 5, 10, ... 100 ms
steps) on the calling thread, and statements run inline on the event loop
(storage/inline_sqlite.py): the whole process then stalls, reads and HTTP parsing included,
and wakes up late, long after the other process let go. Two API processes (``openpse serve
--workers 2``), or an API process beside ``openpse worker``, spent most of their time so.

So OpenPSE's writers first take an OS lock of their own on a file beside the database
(``<database>-writer.lock``, ``flock``): uncontended, a non-blocking attempt on the loop takes it
at once (a system call); contended, a helper thread blocks on it while the loop serves other
requests, and the kernel wakes that thread the moment the holder lets go. The lock is held for
the whole write transaction, commit included, so SQLite's own lock is then free when ``BEGIN
IMMEDIATE`` asks for it. It is an ordering aid only: SQLite's lock still guards the data, and a
writer that does not know this file (the sqlite3 shell, a migration) is met by the busy handler
as before. A wait longer than ``timeout`` goes on without the file lock, to SQLite's busy handler
(and its error when that times out too).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["WriterFileLock", "lock_path_for"]


def lock_path_for(database_path: str) -> str | None:
    """The lock file for a database file; None for an in-memory database (only this process
    sees it) or a ``file:`` URI (left to SQLite's busy handler)."""
    if not database_path or database_path == ":memory:" or database_path.startswith("file:"):
        return None
    return database_path + "-writer.lock"


class WriterFileLock:
    """An exclusive ``flock`` on ``path`` for one writer of this process at a time (the caller
    serialises its own writers: one ``acquire`` outstanding, then one ``release``)."""

    def __init__(self, path: str, *, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._held = False
        self._release_guard = threading.Lock()  # released by the commit's thread or the loop
        self._waiter: ThreadPoolExecutor | None = None
        # A wait given up (cancelled or timed out) whose thread may still be blocked: later
        # waits queue behind it on the same thread (a non-blocking attempt meanwhile could be
        # granted to this same open file and then be let go by that thread).
        self._abandoned: Future[None] | None = None
        self.waits = 0  # acquisitions that had to wait for another holder (for tests, metrics)

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    async def acquire(self) -> None:
        """Hold the lock (or, after ``timeout`` seconds of waiting, go on without it).

        A helper thread waits until the lock is free (takes it and lets go at once); the loop
        then takes it when it gets back to this task. Were the thread to keep it, the lock would
        be held, unused, while the loop finishes other requests' steps first."""
        fd = self._descriptor()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            if self._abandoned is None or self._abandoned.done():
                self._abandoned = None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    with self._release_guard:
                        self._held = True
                    return
            self.waits += 1
            if self._waiter is None:
                self._waiter = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer-lock")
            free: Future[None] = self._waiter.submit(_wait_until_free, fd)
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(free)),
                                       max(0.0, deadline - loop.time()))
            except BaseException as exc:  # timed out, or cancelled: whoever waited is gone
                self._abandoned = free
                if isinstance(exc, TimeoutError):
                    return  # on to SQLite's busy handler
                raise

    def release(self) -> None:
        """Let go, if held (the commit's thread lets go as soon as the commit is durable; the
        transaction's end does too, for a rollback; the second call does nothing)."""
        with self._release_guard:
            if self._held:
                self._held = False
                fcntl.flock(self._fd or -1, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        if self._waiter is not None:
            self._waiter.shutdown(wait=False, cancel_futures=True)
            self._waiter = None
        if self._abandoned is not None and not self._abandoned.done():
            return  # its thread still uses the descriptor (which closes with the process)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _wait_until_free(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX)
    fcntl.flock(fd, fcntl.LOCK_UN)
