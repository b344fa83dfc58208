"""Writers of several processes on one SQLite file (``openpse serve --workers 2``, or an API process
beside ``openpse worker``) wait for each other on a file lock a helper thread waits for, not in
SQLite's busy handler, which sleeps on the event loop's thread and stalls the whole process.

Each test makes its own SQLite file (whatever OPENPSE_TEST_DB says) and a second, real process
that holds the write lock for a while."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from openpse.storage.db import Database
from openpse.storage.sqlite_lock import WriterFileLock, lock_path_for

HOLD_S = 0.6

# A second process: writes a row in a write transaction it keeps open for HOLD_S seconds
# (through OpenPSE's Database, so it holds the file lock too; or, with "foreign", through plain
# sqlite3 as a shell or migration would), printing "holding" once it has the lock.
_HOLDER = """
import asyncio, sqlite3, sys, time
from sqlalchemy import text
from openpse.storage.db import Database
url, how, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
if how == "foreign":
    conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (who) VALUES ('foreign')")
    print("holding", flush=True)
    time.sleep(hold)
    conn.execute("COMMIT")
    sys.exit(0)
async def main():
    db = Database(url)
    async with db.transaction() as tx:
        await tx.execute(text("INSERT INTO t (who) VALUES ('holder')"))
        print("holding", flush=True)
        time.sleep(hold)  # the holder may block its own loop: it has nothing else to do
    await db.dispose()
asyncio.run(main())
"""


async def _database(tmp_path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    async with db.transaction() as tx:
        await tx.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who TEXT)"))
    return db


def _hold(db: Database, how: str = "openpse", hold: float = HOLD_S) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, db.url, how, str(hold)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "holding"
    return proc


async def _write(db: Database, who: str) -> float:
    start = time.monotonic()
    async with db.transaction() as tx:
        await tx.execute(text("INSERT INTO t (who) VALUES (:who)"), {"who": who})
    return time.monotonic() - start


async def _longest_stall_during(work: asyncio.Future[float]) -> float:
    """The longest time the loop went without running a 5 ms ticker while ``work`` ran."""
    longest = 0.0
    last = time.monotonic()
    while not work.done():
        await asyncio.sleep(0.005)
        now = time.monotonic()
        longest = max(longest, now - last)
        last = now
    return longest


def _lock_is_free(db: Database) -> bool:
    path = lock_path_for(db.url.split(":///", 1)[1])
    assert path is not None
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


async def _eventually_free(db: Database, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not _lock_is_free(db):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _rows(db: Database) -> list[str]:
    async with db.read() as conn:
        return [r[0] for r in await conn.execute(text("SELECT who FROM t ORDER BY id"))]


async def test_a_writer_waiting_for_another_process_leaves_the_loop_running(tmp_path: Path
                                                                            ) -> None:
    db = await _database(tmp_path)
    try:
        holder = _hold(db)
        work = asyncio.ensure_future(_write(db, "here"))
        stall = await _longest_stall_during(work)
        waited = await work
        assert holder.wait(10) == 0
        assert waited >= HOLD_S / 2  # it did wait for the other process's transaction ...
        assert stall < 0.3, f"the event loop stalled {stall:.3f} s"  # ... without stalling
        assert await _rows(db) == ["holder", "here"]
        assert _lock_is_free(db)  # let go at the commit
    finally:
        await db.dispose()


async def test_a_writer_that_does_not_know_the_lock_file_is_waited_for_by_sqlite(tmp_path: Path
                                                                                ) -> None:
    db = await _database(tmp_path)
    try:
        holder = _hold(db, "foreign")
        waited = await _write(db, "here")  # SQLite's busy handler (the loop stalls meanwhile)
        assert holder.wait(10) == 0
        assert waited >= HOLD_S / 2
        assert await _rows(db) == ["foreign", "here"]
    finally:
        await db.dispose()


async def test_a_cancelled_wait_leaves_the_lock_to_others(tmp_path: Path) -> None:
    db = await _database(tmp_path)
    try:
        holder = _hold(db)
        work = asyncio.ensure_future(_write(db, "cancelled"))
        await asyncio.sleep(0.1)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        assert holder.wait(10) == 0
        # Nobody keeps it: the abandoned wait's thread takes it and lets go at once.
        assert await _eventually_free(db)
        assert await _write(db, "after") < HOLD_S / 2
        assert await _rows(db) == ["holder", "after"]
        assert _lock_is_free(db)
    finally:
        await db.dispose()


async def test_a_wait_longer_than_the_timeout_goes_on_without_the_file_lock(tmp_path: Path
                                                                            ) -> None:
    path = str(tmp_path / "x.lock")
    other = os.open(path, os.O_RDWR | os.O_CREAT)
    lock = WriterFileLock(path, timeout=0.2)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        start = time.monotonic()
        await lock.acquire()
        assert 0.15 <= time.monotonic() - start < 2
        assert not lock._held
        assert lock.waits == 1
        fcntl.flock(other, fcntl.LOCK_UN)
        await asyncio.sleep(0.05)
        await lock.acquire()  # the abandoned wait got it and let go: free again
        assert lock._held
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.release()
        lock.release()  # a second release does nothing
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        lock.close()
        os.close(other)
