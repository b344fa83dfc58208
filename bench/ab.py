"""Compare two versions of the hot path's server CPU, run side by side, in-process.

    python bench/ab.py --base HEAD~1                      # this tree against HEAD~1
    python bench/ab.py --base 9b7a325 --scenario refund --database postgresql --pairs 3

On a shared two-core machine the speed can change by half within minutes, so alternating old
and new runs (or HTTP phases) cannot resolve a change of a few per cent. Here each *pair* runs
the old and the new code at the same time, each in its own process with its own fresh database
(`bench/profile_hot_path.py`: the real ASGI app, one request at a time), both measuring from
the moment both have warmed up (``--barrier``), so whatever slows the machine slows both.
Pairs alternate which one starts first (the position alone moved a pair's ratio by up to 8 %;
the geometric mean over both orders cancels it): the same code on both sides gave 0.97 and
1.00 over two pairs each (2026-12-07). Read a mean as a change only beyond a few per cent
(``--base-tree`` this tree, or ``--base HEAD``, measures the noise of the hour).

The old code is a ``git worktree`` of ``--base`` (made once, under the system's temporary
directory); both run with this tree's virtual environment and this tree's profiling script,
each importing ``openpse`` from its own ``src`` (checked: the run fails if not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def worktree(rev: str) -> Path:
    """A checkout of ``rev`` to run the old code from (reused when it is already there)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"openpse-ab-{sha[:12]}"
    if not (path / "src" / "openpse").is_dir():
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(path), sha],
                       cwd=ROOT, check=True, capture_output=True)
    return path


async def _admin(sql: str, pg_url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _one(tree: Path, a: argparse.Namespace, barrier: Path) -> dict[str, Any]:
    """One profiling run of ``tree``'s code on a database of its own, created and dropped;
    it measures once the pair's other run is ready too (``barrier``)."""
    name = f"openpse_ab_{uuid.uuid4().hex[:10]}"
    scratch = Path(tempfile.mkdtemp(prefix="openpse-ab-"))
    if a.database == "postgresql":
        await _admin(f'CREATE DATABASE "{name}"', a.pg_admin_url)
        url = a.pg_admin_url.rsplit("/", 1)[0] + "/" + name
    else:
        url = f"sqlite:///{scratch}/openpse.db"
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "profile_hot_path.py"), "--database-url", url,
            "-n", str(a.n), "--scenario", a.scenario, "--barrier", str(barrier), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{tree}: profile_hot_path failed:\n{err.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        if a.database == "postgresql":
            await _admin(f'DROP DATABASE IF EXISTS "{name}"', a.pg_admin_url)
        shutil.rmtree(scratch, ignore_errors=True)
    _check_code(tree, result)
    return result


def _check_code(tree: Path, result: dict[str, Any]) -> None:
    """The run imported ``openpse`` from ``tree`` (not from the installed package)."""
    ran = Path(result.get("code", "")).resolve()
    if ran != (tree / "src" / "openpse").resolve():
        raise SystemExit(f"expected the code of {tree}, but {ran} ran: check PYTHONPATH")


async def _pairs(base: Path, new: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for i in range(a.pairs):
        old_first = i % 2 == 0
        first, second = (base, new) if old_first else (new, base)
        barrier = Path(tempfile.mkdtemp(prefix="openpse-ab-barrier-"))
        one = asyncio.create_task(_one(first, a, barrier))
        await asyncio.sleep(0)  # let the first start first
        two = asyncio.create_task(_one(second, a, barrier))
        old, cur = (await one, await two) if old_first else (await two, await one)
        shutil.rmtree(barrier, ignore_errors=True)
        rows.append({"pair": i + 1, "first": "old" if old_first else "new",
                     "old_cpu_ms": old["cpu_ms_per_request"],
                     "new_cpu_ms": cur["cpu_ms_per_request"],
                     "cpu_ratio": round(cur["cpu_ms_per_request"] / old["cpu_ms_per_request"], 3),
                     "wall_ratio": round(cur["wall_ms_per_request"]
                                         / old["wall_ms_per_request"], 3)})
    return rows


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    old = ap.add_mutually_exclusive_group(required=True)
    old.add_argument("--base", help="the old code: a commit, branch or tag (a worktree is made)")
    old.add_argument("--base-tree", help="the old code: a tree's path, used as it is")
    ap.add_argument("--new", default=str(ROOT),
                    help="the new code: a tree's path (default: this one)")
    ap.add_argument("--scenario", default="create",
                    help="a bench/profile_hot_path.py scenario (default: create+confirm)")
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--pg-admin-url", default=PG_ADMIN_URL,
                    help="where to create and drop each run's database")
    ap.add_argument("-n", type=int, default=2000, help="requests per run")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--json", help="also write the pairs and the summary here")
    a = ap.parse_args()
    base = worktree(a.base) if a.base else Path(a.base_tree).resolve()
    new = Path(a.new).resolve()
    rows = asyncio.run(_pairs(base, new, a))
    summary = {"base": a.base or str(base), "new": str(new), "scenario": a.scenario,
               "database": a.database, "requests": a.n, "pairs": rows,
               "cpu_ratio_geomean": round(geomean([r["cpu_ratio"] for r in rows]), 3),
               "wall_ratio_geomean": round(geomean([r["wall_ratio"] for r in rows]), 3)}
    print(f"{a.scenario} on {a.database}, {a.n} requests a run, new = {new}, "
          f"old = {a.base or base}")
    print("| pair | started first | old CPU ms | new CPU ms | new/old CPU | new/old wall |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pair']} | {r['first']} | {r['old_cpu_ms']} | {r['new_cpu_ms']} "
              f"| {r['cpu_ratio']} | {r['wall_ratio']} |")
    print(f"new/old server CPU per request, geometric mean: {summary['cpu_ratio_geomean']} "
          f"(wall {summary['wall_ratio_geomean']}); the same code gave 0.97-1.00")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
