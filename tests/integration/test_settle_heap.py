"""The processes that own their interpreter (``openpse serve``'s app factory, ``openpse
worker``) freeze their startup heap out of the cyclic collector's sight once built and raise
the youngest generation's threshold (``bootstrap.settle_heap``); code that builds apps and
drops them (tests, embedders) does neither.

Each check runs in a fresh interpreter: freezing is per process and cannot be undone here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from openpse.bootstrap import YOUNG_GENERATION_THRESHOLD
from tests.support.servers import TEST_MASTER_KEY

# Far fewer objects than the app's modules, models and tables make (≈ 140,000 measured).
MANY_OBJECTS = 20_000


def _python(code: str, db_url: str, tmp: Path) -> list[int]:
    env = dict(os.environ, OPENPSE_DATABASE_URL=db_url, OPENPSE_MASTER_KEY=TEST_MASTER_KEY,
               OPENPSE_DATA_DIR=str(tmp), OPENPSE_LOG_LEVEL="WARNING")
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return [int(x) for x in res.stdout.split()]


def test_the_serve_factory_freezes_the_built_app(migrated_db: str, tmp_path: Path) -> None:
    counts = _python("""
        import gc
        from openpse.asgi import create
        before = gc.get_freeze_count()
        create()
        print(before, gc.get_freeze_count(), *gc.get_threshold())
    """, migrated_db, tmp_path)
    before, after, young, older, oldest = counts
    assert before == 0
    assert after > MANY_OBJECTS
    # the young generation's threshold raised; the older ones kept at CPython's defaults
    assert (young, older, oldest) == (YOUNG_GENERATION_THRESHOLD, 10, 10)


def test_building_an_app_alone_freezes_nothing(migrated_db: str, tmp_path: Path) -> None:
    counts = _python("""
        import gc
        from openpse.bootstrap import build_app
        from openpse.config import Settings
        build_app(Settings())
        print(gc.get_freeze_count(), gc.get_threshold()[0])
    """, migrated_db, tmp_path)
    count, young = counts
    assert count == 0
    assert young == 700  # CPython's default: tests and embedders keep their collector as is


def test_the_worker_freezes_its_heap_once_built(migrated_db: str, tmp_path: Path) -> None:
    counts = _python("""
        import asyncio, gc, os, signal, threading
        from openpse.bootstrap import run_worker
        from openpse.config import Settings
        threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        asyncio.run(run_worker(Settings()))
        print(gc.get_freeze_count(), gc.get_threshold()[0])
    """, migrated_db, tmp_path)
    count, young = counts
    assert count > MANY_OBJECTS // 4  # the worker builds no API: fewer objects
    assert young == YOUNG_GENERATION_THRESHOLD
