"""SQLite for the async engine without a thread hop per call.

aiosqlite runs every call on a helper thread; each statement then costs several hops between
that thread and the event loop, and a write transaction stays open (holding SQLite's single
write lock) while the loop serves other requests between those hops. SQLite calls themselves
take microseconds, so for OpenPSE's short transactions it is faster *and* holds the write lock
for less time to run them inline, on the event loop's thread.

This module is a minimal stand-in with the shape of an ``aiosqlite`` connection that SQLAlchemy's
aiosqlite dialect drives (``create_async_engine(..., async_creator=...)``): every method is a
coroutine that completes at once. The cost is that a statement blocks the loop while it runs,
so it suits the short indexed statements of the request path; ``busy_timeout`` waits (another
*process* holding the write lock) would block the loop too. The one exception is COMMIT: with
``synchronous=FULL`` it waits for the disk (an fsync of the WAL), and run inline that wait
stalled every request queued behind it (a closed-loop run of 32 clients saw p99 ~450 ms and
single requests of 8-9 s); it runs on a helper thread instead (p99 ~200 ms, max ~200 ms).
``busy_timeout`` waits are rare since OpenPSE's writers first wait for each other on a file
lock, off the loop (storage/sqlite_lock.py); that thread lets go of it once a commit is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SQLITE_SYNCHRONOUS", "InlineConnection", "inline_creator"]

# Every connection's durability: a COMMIT returns once the WAL is on disk (fsync). The one
# exception, a single statement that stands in for another system's books, is
# Database.write_async_commit.
SQLITE_SYNCHRONOUS = "FULL"


class InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    def __await__(self) -> Any:  # ``await conn.cursor()``
        async def _self() -> InlineCursor:
            return self

        return _self().__await__()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if parameters is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, seq: Iterable[Any]) -> InlineCursor:
        self._cursor.executemany(sql, seq)
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def close(self) -> None:
        self._cursor.close()

    async def nextset(self) -> None:
        return None


class InlineConnection:
    """What SQLAlchemy's aiosqlite adapter expects of an aiosqlite connection."""

    def __init__(self, conn: sqlite3.Connection,
                 after_commit: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn
        self._committer: _Committer | None = None
        self._after_commit = after_commit

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection itself (storage/direct.py runs statements on it)."""
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        if not self._conn.in_transaction:
            return
        # A durable commit (synchronous=FULL) waits for the disk; that wait happens on a
        # thread (sqlite3 releases the GIL), so the loop serves other requests meanwhile.
        # The writer slot stays held, so this changes no ordering.
        if self._committer is None:
            self._committer = _Committer(self._commit)
        await self._committer.commit()

    def commit_inline(self) -> None:
        """COMMIT on the calling thread: for a commit that waits for no disk
        (``synchronous=NORMAL``, Database.write_async_commit), which a hop to the commit
        thread would only slow down."""
        if self._conn.in_transaction:
            self._commit()

    def _commit(self) -> None:
        self._conn.commit()
        if self._after_commit is not None:
            # Straight from this thread: the loop may get back to the committing task only
            # after other requests' steps, and another process should not wait for those.
            self._after_commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._committer is not None:
            self._committer.stop()
            self._committer = None
        if self._connection is not None:
            self._connection = None
            self._conn.close()


class _Committer:
    """The thread a connection's COMMITs run on, one at a time (the writer slot orders them).

    A queue and ``call_soon_threadsafe`` instead of ``run_in_executor``: the executor's
    futures, chained into the loop's, cost ≈ 40 µs more CPU per commit here (0.15 against
    0.11 ms for a small transaction, measured with synchronous=FULL), three commits per
    payment on SQLite. A waiter cancelled meanwhile does not stop the commit (nor did the
    executor's): it completes, and the connection's next user finds it done."""

    def __init__(self, commit: Callable[[], None]) -> None:
        self._commit = commit
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]
                                      | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-commit", daemon=True)
        self._thread.start()

    async def commit(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._jobs.put((loop, done))
        await done

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, done = job
            try:
                self._commit()
            except BaseException as exc:  # handed to the waiter
                _settle(loop, done, exc)
            else:
                _settle(loop, done, None)

    def stop(self) -> None:
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()


def _settle(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None],
            exc: BaseException | None) -> None:
    """Resolve ``done`` on its loop (from the committer's thread); nothing if it was cancelled
    or the loop is gone."""

    def _set() -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
        loop.call_soon_threadsafe(_set)


def inline_creator(path: str, after_commit: Callable[[], None] | None = None
                   ) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine`` opening ``path`` inline;
    ``after_commit`` runs on the commit's thread once a commit is durable."""

    async def create() -> InlineConnection:
        # isolation_level=None: SQLAlchemy's "begin" hook issues BEGIN [IMMEDIATE] itself.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        return InlineConnection(conn, after_commit)

    return create
