"""The unit of work's statement-level paths: ``Database.write_async_commit`` (one write, its own
transaction, whose commit does not wait for the disk: it commits by itself, a failure leaves
nothing behind, the connection's later commits are durable again, and a deferred first write
still pending in the context shares a durable transaction with it); a unit's last write or
first read carrying a deferred first write; units begun alone; before-commit and rollback
hooks."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from openpse.storage.db import first_write
from openpse.storage.direct import direct, json_param
from openpse.storage.tables import simulator_operations


def _op(reference: str) -> dict[str, Any]:
    return {"reference": reference, "operation": "sale", "amount": 100, "currency": "JPY",
            "result": {"outcome": "captured"}, "created": 1}


async def _count(services: Any, *refs: str) -> int:
    async with services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(simulator_operations)
                                       .where(simulator_operations.c.reference.in_(refs))))
                   .scalar_one())


async def _writer_durability(services: Any) -> str:
    """The durability the writer connections' next commits get: SQLite's ``synchronous`` level
    (2 = FULL), PostgreSQL's ``synchronous_commit``."""
    async with services.db.transaction() as tx:
        sql = ("SELECT synchronous AS s FROM pragma_synchronous" if services.db.is_sqlite
               else "SELECT current_setting('synchronous_commit') AS s")
        row = await direct(tx).fetchone(sql)
    assert row is not None
    return str(row["s"])


async def test_a_write_with_an_asynchronous_commit_commits_by_itself(services: Any) -> None:
    durable = await _writer_durability(services)
    assert durable in ("2", "on")
    ref = f"stmt-{uuid.uuid4().hex}"
    await services.db.write_async_commit((simulator_operations, _op(ref)))
    assert await _count(services, ref) == 1  # visible to everyone at once
    # the connection's later commits wait for the disk again (SQLite: the pragma is set back;
    # PostgreSQL: the setting lasted for that statement's own transaction only)
    assert await _writer_durability(services) == durable
    updated = (simulator_operations, {"amount": 250}, {"reference": ref})
    await services.db.write_async_commit(updated)
    async with services.db.read() as conn:
        amount = (await conn.execute(select(simulator_operations.c.amount).where(
            simulator_operations.c.reference == ref))).scalar_one()
    assert amount == 250 and await _writer_durability(services) == durable


async def test_a_failed_asynchronous_commit_leaves_nothing_and_the_connection_durable(
        services: Any) -> None:
    durable = await _writer_durability(services)
    ref = f"stmt-{uuid.uuid4().hex}"
    await services.db.write_async_commit((simulator_operations, _op(ref)))
    for _ in range(3):  # the same writer connections come back after each failure
        with pytest.raises(IntegrityError):
            await services.db.write_async_commit((simulator_operations, _op(ref)))
        assert await _writer_durability(services) == durable
    other = f"stmt-{uuid.uuid4().hex}"
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(other))
        await tx.execute(insert(simulator_operations).values(**_op(f"core-{other}")))
    assert await _count(services, ref, other, f"core-{other}") == 3


_KILLED_AFTER_WRITE = """
import asyncio, os, signal, sys
from openpse.config import to_async_url
from openpse.storage.db import Database
from openpse.storage.tables import simulator_operations

async def main():
    db = Database(to_async_url(sys.argv[1]))
    await db.write_async_commit((simulator_operations, {
        "reference": sys.argv[2], "operation": "sale", "amount": 100, "currency": "JPY",
        "result": {"outcome": "captured"}, "created": 1}))
    sys.stdout.write("written\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown, no later commit

asyncio.run(main())
"""


async def test_an_asynchronous_commit_survives_its_process_being_killed(
        services: Any, migrated_db: str) -> None:
    """Only a crash of the machine can lose it: the write is in PostgreSQL's WAL buffers, or
    in SQLite's WAL file, the moment the statement returns."""
    import signal
    import subprocess
    import sys

    ref = f"killed-{uuid.uuid4().hex}"
    proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_WRITE, migrated_db, ref],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == "written\n", proc.stderr
    assert await _count(services, ref) == 1


class _Hook:
    """A deferred first write (as a request's idempotency claim is): one row of its own."""

    def __init__(self, ref: str) -> None:
        self.ref, self.state = ref, "pending"

    def pending(self) -> bool:
        return self.state == "pending"

    def take(self) -> bool:
        if self.state != "pending":
            return False
        self.state = "running"
        return True

    async def run(self, tx: Any) -> None:
        await direct(tx).insert(simulator_operations, _op(self.ref))

    def committed(self) -> None:
        self.state = "committed"

    def rolled_back(self) -> None:
        self.state = "pending"


class _Boom(Exception):
    pass


async def test_a_pending_first_write_shares_a_durable_transaction_with_the_write(
        services: Any) -> None:
    """A deferred first write still pending in the context (a request's idempotency claim)
    must commit with the write, durably: they roll back together and commit together."""
    hook_ref, ref = f"hook-{uuid.uuid4().hex}", f"stmt-{uuid.uuid4().hex}"
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(ref))
    hook = _Hook(hook_ref)
    with first_write(hook):
        with pytest.raises(IntegrityError):  # ref is taken: the hook's row goes too
            await services.db.write_async_commit((simulator_operations, _op(ref)))
        assert hook.state == "pending" and await _count(services, hook_ref) == 0
        fresh = f"stmt-{uuid.uuid4().hex}"
        await services.db.write_async_commit((simulator_operations, _op(fresh)))
    assert hook.state == "committed" and await _count(services, hook_ref, fresh) == 2


class _Lost(Exception):
    pass


class _FoldingHook(_Hook):
    """A deferred first write that can also ride in the unit's last write (``Direct.defer``,
    PostgreSQL), as a request's idempotency claim does."""

    def __init__(self, ref: str) -> None:
        super().__init__(ref)
        self.folded_row: dict[str, Any] | None = None
        self.joined_row: dict[str, Any] | None = None

    def fold(self) -> tuple[str, dict[str, Any]]:
        return ("f AS (INSERT INTO simulator_operations (reference, operation, amount, currency,"
                " result, created) VALUES (:h_ref, 'sale', 100, 'JPY', :h_result, 1) "
                "RETURNING reference)",
                {"h_ref": self.ref, "h_result": json_param({"outcome": "captured"})})

    def folded(self, row: Any) -> None:
        self.folded_row, self.state = dict(row), "committed"

    def fold_failed(self, exc: IntegrityError) -> None:
        if self.ref in (getattr(exc.orig, "detail", None) or ""):  # its own row's key
            self.state = "lost"
            raise _Lost from exc

    def joined(self, row: Any) -> None:
        self.joined_row = dict(row)


_MAIN = ("INSERT INTO simulator_operations (reference, operation, amount, currency, result, "
         "created) VALUES (:ref, 'sale', 100, 'JPY', :result, 1)")


def _read(services: Any) -> str:
    """One row's locking read (SQLite: its one writer serialises; no FOR UPDATE there)."""
    return ("SELECT reference, amount FROM simulator_operations WHERE reference = :ref"
            + ("" if services.db.is_sqlite else " FOR UPDATE"))


def _main(ref: str) -> dict[str, Any]:
    return {"ref": ref, "result": json_param({"outcome": "captured"})}


async def test_the_units_last_write_carries_a_deferred_first_write(services: Any) -> None:
    hook_ref, ref = f"hook-{uuid.uuid4().hex}", f"stmt-{uuid.uuid4().hex}"
    hook = _FoldingHook(hook_ref)
    with first_write(hook):
        async with services.db.transaction() as tx:
            assert await direct(tx).execute_guarded(_MAIN, _main(ref), last=True) == []
            if not services.db.is_sqlite:  # it committed alone: nothing may follow it
                assert await _count(services, hook_ref, ref) == 2
                with pytest.raises(RuntimeError, match="after the unit's last write"):
                    await direct(tx).fetchone("SELECT 1 AS one")
    assert hook.state == "committed" and await _count(services, hook_ref, ref) == 2
    # PostgreSQL: one statement (the hook's CTE returned its row); SQLite: BEGIN, run, write
    assert hook.folded_row == (None if services.db.is_sqlite else {"reference": hook_ref})


@pytest.mark.parametrize("carrier", ["the last write", "the first read"])
async def test_a_taken_first_write_stops_the_statement_carrying_it_and_its_unit(
        services: Any, carrier: str) -> None:
    """The first write's own row is taken: the statement that carries it (the unit's last
    write, ``execute_guarded(last=True)``, or its first read, ``fetchone(carry=True)``) stops
    with nothing of the unit written, and the connection stays usable."""
    hook_ref, ref = f"hook-{uuid.uuid4().hex}", f"stmt-{uuid.uuid4().hex}"
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(hook_ref))
    hook = _FoldingHook(hook_ref)
    with first_write(hook), pytest.raises((_Lost, IntegrityError)):
        async with services.db.transaction() as tx:
            if carrier == "the last write":
                await direct(tx).execute_guarded(_MAIN, _main(ref), last=True)
            else:
                await direct(tx).fetchone(_read(services), {"ref": ref}, carry=True)
                await direct(tx).insert(simulator_operations, _op(ref))
    assert await _count(services, ref) == 0 and hook.state in ("lost", "pending")
    async with services.db.transaction() as tx:  # the connection is usable, nothing is open
        await direct(tx).insert(simulator_operations, _op(ref))
    assert await _count(services, hook_ref, ref) == 2


async def test_a_unit_that_writes_before_its_last_write_runs_the_first_write_first(
        services: Any) -> None:
    hook_ref, before, ref = (f"{p}-{uuid.uuid4().hex}" for p in ("hook", "before", "stmt"))
    hook = _FoldingHook(hook_ref)
    with first_write(hook), pytest.raises(_Boom):
        async with services.db.transaction() as tx:
            await direct(tx).insert(simulator_operations, _op(before))
            await direct(tx).execute_guarded(_MAIN, _main(ref), last=True)
            raise _Boom  # the three roll back together: the last write did not commit alone
    assert hook.folded_row is None and hook.state == "pending"
    assert await _count(services, hook_ref, before, ref) == 0
    with first_write(hook):
        async with services.db.transaction() as tx:
            await direct(tx).insert(simulator_operations, _op(before))
            await direct(tx).execute_guarded(_MAIN, _main(ref), last=True)
    assert hook.folded_row is None and hook.state == "committed"
    assert await _count(services, hook_ref, before, ref) == 3


async def test_another_rows_violation_in_the_last_write_rolls_the_first_write_back(
        services: Any) -> None:
    hook_ref, ref = f"hook-{uuid.uuid4().hex}", f"stmt-{uuid.uuid4().hex}"
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(ref))
    hook = _FoldingHook(hook_ref)
    with first_write(hook):
        with pytest.raises(IntegrityError):  # SQLAlchemy's, as from any other statement
            async with services.db.transaction() as tx:
                await direct(tx).execute_guarded(_MAIN, _main(ref), last=True)
        assert hook.state == "pending" and await _count(services, hook_ref) == 0
        async with services.db.transaction() as tx:  # the claim is still to be written
            await direct(tx).insert(simulator_operations, _op(f"after-{ref}"))
    assert hook.state == "committed" and await _count(services, hook_ref) == 1


async def test_direct_and_sqlalchemy_writes_of_a_unit_commit_and_roll_back_together(
        services: Any) -> None:
    """A unit begins on the driver (``Direct.begin_unit``); a statement through SQLAlchemy
    joins that transaction, in either order."""
    first, second = f"mixed-{uuid.uuid4().hex}", f"mixed-{uuid.uuid4().hex}"
    with pytest.raises(_Boom):
        async with services.db.transaction() as tx:
            await direct(tx).insert(simulator_operations, _op(first))
            await tx.execute(insert(simulator_operations).values(**_op(second)))
            raise _Boom
    assert await _count(services, first, second) == 0
    async with services.db.transaction() as tx:
        await tx.execute(insert(simulator_operations).values(**_op(second)))
        await direct(tx).insert(simulator_operations, _op(first))
        assert await direct(tx).fetchone("SELECT count(*) AS n FROM simulator_operations "
                                         "WHERE reference IN (:a, :b)",
                                         {"a": first, "b": second}) == {"n": 2}
    assert await _count(services, first, second) == 2
    used = []
    for _ in range(2):  # SQLAlchemy's commit ended its bookkeeping too: the connection is kept
        async with services.db.transaction() as tx:
            await tx.execute(insert(simulator_operations).values(**_op(uuid.uuid4().hex)))
            used.append(tx)
    assert used[0] is used[1]
    with pytest.raises(IntegrityError):  # a failed statement ends the unit, nothing half-done
        async with services.db.transaction() as tx:
            await direct(tx).insert(simulator_operations, _op(f"x-{first}"))
            await tx.execute(insert(simulator_operations).values(**_op(second)))
    assert await _count(services, f"x-{first}") == 0


_TAIL = ("INSERT INTO simulator_operations (reference, operation, amount, currency, result, "
         "created) SELECT :t_ref, 'sale', 100, 'JPY', :t_result, 1 WHERE {ok}")


async def test_a_unit_begun_alone_is_its_last_write_guards_and_tail_included(
        services: Any) -> None:
    """``transaction(alone=True)``: on PostgreSQL the last write runs alone, in autocommit,
    checks its guards itself and carries the tail; a missed guard writes nothing. SQLite (and
    a unit that ran a statement first) keeps an ordinary transaction."""
    from openpse.storage.direct import GuardMissed

    guarded, ref, tail = (f"{p}-{uuid.uuid4().hex}" for p in ("guarded", "stmt", "tail"))
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(guarded))
    hit = (simulator_operations, {"amount": 200}, {"reference": guarded, "amount": 100})
    missed = (simulator_operations, {"amount": 300}, {"reference": guarded, "amount": 100})
    tail_params = {"t_ref": tail, "t_result": json_param({"outcome": "captured"})}
    alone = not services.db.is_sqlite
    async with services.db.transaction(alone=True) as tx:
        assert direct(tx).can_run_alone is alone
        counts = await direct(tx).execute_guarded(
            _MAIN, _main(ref), guards=[hit], last=True,
            tails=[(_TAIL, tail_params)] if alone else ())
        assert counts == [1]
        assert await _count(services, ref) == (1 if alone else 0)  # committed by itself
    assert await _count(services, ref) == 1 and await _count(services, tail) == int(alone)
    if not alone:
        return
    again, tail2 = f"stmt-{uuid.uuid4().hex}", f"tail-{uuid.uuid4().hex}"
    with pytest.raises(GuardMissed):  # amount is 200 now: the guard misses
        async with services.db.transaction(alone=True) as tx:
            await direct(tx).execute_guarded(_MAIN, _main(again), guards=[missed], last=True,
                                             tails=[(_TAIL, {**tail_params, "t_ref": tail2})])
    assert await _count(services, again, tail2) == 0
    async with services.db.read() as conn:
        amount = (await conn.execute(select(simulator_operations.c.amount).where(
            simulator_operations.c.reference == guarded))).scalar_one()
    assert amount == 200
    before = f"before-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="tail"):  # a statement ran first: a transaction now
        async with services.db.transaction(alone=True) as tx:
            await direct(tx).insert(simulator_operations, _op(before))
            assert not direct(tx).can_run_alone
            await direct(tx).execute_guarded(_MAIN, _main(again), last=True,
                                             tails=[(_TAIL, tail_params)])
    assert await _count(services, before, again) == 0  # rolled back together


async def test_before_commit_work_goes_into_the_last_write_only_when_all_of_it_can(
        services: Any) -> None:
    """``db.take_before_commit``: hooks that all have a statement form are taken off the
    commit (they run as statements, not again at commit); one without a form leaves them all
    to the commit."""
    from openpse.storage.db import before_commit, take_before_commit

    refs = [f"hook-{uuid.uuid4().hex}" for _ in range(3)]

    def hook_for(ref: str) -> Any:
        async def hook(conn: Any) -> None:
            await direct(conn).insert(simulator_operations, _op(ref))
        return hook

    def form_for(ref: str) -> Any:
        return lambda conn: (_TAIL.replace(":t_ref", f"'{ref}'"), {"t_result": "{}"})

    async with services.db.transaction() as tx:
        before_commit(tx, hook_for(refs[0]), as_statement=form_for(refs[0]))
        before_commit(tx, hook_for(refs[1]))  # no statement form
        assert take_before_commit(tx) is None
    assert await _count(services, refs[0], refs[1]) == 2  # both ran at commit
    async with services.db.transaction() as tx:
        before_commit(tx, hook_for(refs[2]), as_statement=form_for(refs[2]))
        taken = take_before_commit(tx)
        assert taken is not None and [sql for sql, _ in taken] == [form_for(refs[2])(tx)[0]]
    assert await _count(services, refs[2]) == 0  # taken off the commit: its caller runs it


async def test_rollback_hooks_run_when_the_unit_does_not_commit_and_only_then(
        services: Any) -> None:
    """``db.on_rollback``: called for a unit that raised, or whose lone statement missed a
    guard (PostgreSQL); not for one that committed, nor carried into the connection's next
    unit."""
    from openpse.storage.db import on_rollback
    from openpse.storage.direct import GuardMissed

    calls: list[str] = []
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(f"rb-{uuid.uuid4().hex}"))
        on_rollback(tx, lambda: calls.append("committed"))
    assert calls == []
    async with services.db.transaction() as tx:  # the same writer: no hook left over
        await direct(tx).insert(simulator_operations, _op(f"rb-{uuid.uuid4().hex}"))
    assert calls == []
    ref = f"rb-{uuid.uuid4().hex}"
    with pytest.raises(IntegrityError):
        async with services.db.transaction() as tx:
            on_rollback(tx, lambda: calls.append("failed"))
            await direct(tx).insert(simulator_operations, _op(ref))
            await direct(tx).insert(simulator_operations, _op(ref))
    assert calls == ["failed"] and await _count(services, ref) == 0
    if services.db.is_sqlite:  # no lone statement
        return
    missed = (simulator_operations, {"amount": 300}, {"reference": ref, "amount": 100})
    with pytest.raises(GuardMissed):  # no such row: the guard misses, nothing is written
        async with services.db.transaction(alone=True) as tx:
            on_rollback(tx, lambda: calls.append("missed"))
            await direct(tx).execute_guarded(_MAIN, _main(f"rb-{uuid.uuid4().hex}"),
                                             guards=[missed], last=True)
    assert calls == ["failed", "missed"]


async def test_an_answer_stored_in_a_unit_that_rolled_back_is_not_taken_as_stored(
        services: Any) -> None:
    """``IdempotencyStore.store_in`` tells the claim its answer is stored; when that unit does
    not commit the claim goes back to what it said before (the pipeline then stores what it
    sends instead of taking it as stored)."""
    from openpse.api.idempotency import Claimed, IdempotencyStore
    from tests.conftest import new_merchant

    kit = await new_merchant(services, "http://127.0.0.1:9")
    store = IdempotencyStore(services.db, services.secrets, lock_timeout_s=60)
    got = await store.begin(merchant_id=kit.merchant_id, livemode=False, key=uuid.uuid4().hex,
                            method="POST", path="/v1/payments", req_hash="h",
                            now=services.now())
    assert isinstance(got, Claimed) and got.stored is None
    headers = {"content-type": "application/json"}
    async with services.db.transaction() as tx:
        await store.store_in(tx, got, status=200, headers=headers, body=b'{"a":1}')
    first = got.stored
    assert first is not None and first[2] == b'{"a":1}'

    class _Boom(Exception):
        pass

    with pytest.raises(_Boom):
        async with services.db.transaction() as tx:
            await store.store_in(tx, got, status=201, headers=headers, body=b'{"a":2}')
            assert got.stored is not None and got.stored[2] == b'{"a":2}'
            raise _Boom
    assert got.stored == first  # the committed answer, not the one rolled back


@pytest.mark.parametrize("exists", [True, False])
async def test_the_units_first_read_carries_a_deferred_first_write(services: Any,
                                                                   exists: bool) -> None:
    """``fetchone(carry=True)`` as the unit's first statement: on PostgreSQL BEGIN, then the
    read with the first write's CTEs in front (``joined`` gets its row), the unit still open
    for more; a read that finds nothing still writes it. On SQLite the first write runs first,
    as before. Either way it commits with the unit."""
    hook_ref, ref, later = (f"{p}-{uuid.uuid4().hex}" for p in ("hook", "read", "later"))
    if exists:
        async with services.db.transaction() as tx:
            await direct(tx).insert(simulator_operations, _op(ref))
    hook = _FoldingHook(hook_ref)
    with first_write(hook):
        async with services.db.transaction() as tx:
            got = await direct(tx).fetchone(_read(services), {"ref": ref}, carry=True)
            assert got == ({"reference": ref, "amount": 100} if exists else None)
            await direct(tx).insert(simulator_operations, _op(later))  # the unit goes on
    assert hook.state == "committed"
    assert hook.joined_row == (None if services.db.is_sqlite else {"reference": hook_ref})
    assert await _count(services, hook_ref, later) == 2


async def test_a_lone_statement_chosen_as_a_deadlocks_victim_is_a_missed_guard(
        services: Any, migrated_db: str) -> None:
    """PostgreSQL: the lone statement (``execute_guarded(last=True)`` run alone) locks its
    guards' rows in order; another transaction holding the second and then asking for the
    first makes a deadlock. The lone statement is the victim (the other session waits 10 s
    before checking): it raises ``GuardMissed`` with nothing of it written, so its caller's
    locked path decides again (``payments.unlocked_first``), instead of a driver error."""
    import asyncio

    import asyncpg

    from openpse.storage.direct import GuardMissed

    if services.db.is_sqlite:  # one writer at a time: no deadlock to lose
        return
    first, second, ref = (f"dl-{p}-{uuid.uuid4().hex}" for p in ("first", "second", "stmt"))
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(first))
        await direct(tx).insert(simulator_operations, _op(second))
    other = await asyncpg.connect(migrated_db)
    try:
        await other.execute("SET deadlock_timeout = '10s'")
        await other.execute("BEGIN")
        await other.execute("UPDATE simulator_operations SET amount = 101 WHERE reference = $1",
                            second)

        async def lone() -> list[int]:
            async with services.db.transaction(alone=True) as tx:
                return await direct(tx).execute_guarded(
                    _MAIN, _main(ref), last=True,
                    guards=[(simulator_operations, {"amount": 200},
                             {"reference": r, "amount": 100}) for r in (first, second)])

        victim = asyncio.create_task(lone())
        for _ in range(100):  # until it waits for the row the other session holds
            waiting = await other.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting == 1
        # the other session now asks for the row the lone statement holds: a deadlock
        await other.execute("UPDATE simulator_operations SET amount = 101 WHERE reference = $1",
                            first)
        with pytest.raises(GuardMissed, match="deadlock"):
            await victim
        await other.execute("COMMIT")
    finally:
        await other.close()
    async with services.db.read() as conn:
        amounts = {r.reference: r.amount for r in (await conn.execute(
            select(simulator_operations.c.reference, simulator_operations.c.amount).where(
                simulator_operations.c.reference.in_((first, second))))).all()}
    assert amounts == {first: 101, second: 101}  # the victim's update of `first` is gone
    assert await _count(services, ref) == 0
    async with services.db.transaction(alone=True) as tx:  # the writers are usable
        await direct(tx).execute_guarded(_MAIN, _main(ref), last=True)
    assert await _count(services, ref) == 1
