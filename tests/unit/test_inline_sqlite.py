"""The inline SQLite connection's COMMIT runs on its own thread (storage/inline_sqlite.py): the
event loop goes on meanwhile, the commit's outcome reaches the waiter, a cancelled waiter does
not stop the commit nor break the next one, and ``after_commit`` runs on that thread once the
commit is durable."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from openpse.storage.inline_sqlite import _Committer, inline_creator


async def test_a_commit_leaves_the_loop_running_and_reports_its_outcome() -> None:
    release, threads = threading.Event(), []

    def slow_commit() -> None:
        threads.append(threading.get_ident())
        if not release.wait(5):
            raise TimeoutError("never released")

    committer = _Committer(slow_commit)
    try:
        waiting = asyncio.ensure_future(committer.commit())
        ticks = 0
        while ticks < 20:  # the loop runs other work while the commit waits
            await asyncio.sleep(0.001)
            ticks += 1
        assert not waiting.done()
        release.set()
        await asyncio.wait_for(waiting, 5)
        assert threads and threads[0] != threading.get_ident()
    finally:
        committer.stop()


async def test_a_failed_commit_raises_in_the_waiter() -> None:
    def failing() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    committer = _Committer(failing)
    try:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await asyncio.wait_for(committer.commit(), 5)
    finally:
        committer.stop()


async def test_a_cancelled_waiter_does_not_stop_the_commit_nor_the_next() -> None:
    release, done = threading.Event(), []

    def commit() -> None:
        release.wait(5)
        done.append(True)

    committer = _Committer(commit)
    try:
        waiting = asyncio.ensure_future(committer.commit())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await asyncio.wait_for(committer.commit(), 5)  # runs after the first one finished
        assert done == [True, True]
    finally:
        committer.stop()


async def test_a_real_commit_is_durable_and_lets_go_on_its_thread(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    released: list[int] = []
    conn = await inline_creator(path, lambda: released.append(threading.get_ident()))()
    try:
        raw = conn.raw
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE t (v TEXT)")
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO t VALUES ('x')")
        await conn.commit()
        assert not raw.in_transaction
        other = sqlite3.connect(path)
        assert other.execute("SELECT v FROM t").fetchall() == [("x",)]
        other.close()
        assert len(released) == 1 and released[0] != threading.get_ident()
        await conn.commit()  # nothing open: no thread, no after_commit
        assert len(released) == 1
    finally:
        await conn.close()
