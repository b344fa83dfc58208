"""Hot-path statements straight on the driver, inside the caller's SQLAlchemy transaction.

SQLAlchemy Core builds, caches and post-processes every statement: about 0.1-0.3 ms of Python
per statement, which on the payment path (dozens of statements per request) was most of the
server's CPU. ``direct(conn)`` hands out the driver connection under the *same* transaction
(asyncpg on PostgreSQL, sqlite3 on SQLite), so a few fixed statements can skip that work and
still commit or roll back with everything else the unit of work did.

Statements are plain SQL with ``:name`` parameters (rewritten to ``$n`` for asyncpg once per
statement text). JSON values are passed already encoded (:func:`json_param`); rows come back as
dicts with JSON columns decoded and booleans as ``bool`` when the table is named, exactly as
SQLAlchemy would return them. A unique-key violation raises SQLAlchemy's ``IntegrityError``, so
callers handle both paths the same way.

``execute(..., writes=[...])`` makes writes the statement does not depend on in the same round
trip: ``(table, row)`` inserts a row, ``(table, values, where)`` updates like :meth:`update`.
On PostgreSQL each becomes an ``INSERT`` or ``UPDATE`` in the statement's ``WITH`` (they run
with it, in one snapshot: the statement must not read their tables, nor two of them touch the
same row; foreign keys are checked at its end); on SQLite they simply run first, in order.

The schema stays SQLAlchemy's (tables.py, Alembic); only the execution is direct.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from asyncpg.exceptions import DeadlockDetectedError as _PG_DEADLOCK
from asyncpg.exceptions import IntegrityConstraintViolationError as _PG_INTEGRITY
from asyncpg.exceptions import InvalidTextRepresentationError as _PG_BAD_TEXT
from sqlalchemy import JSON, Boolean, Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from openpse.storage.inline_sqlite import SQLITE_SYNCHRONOUS

__all__ = ["Direct", "Foldable", "GatedStatement", "GuardMissed", "Write", "Writes", "decode",
           "direct", "json_param", "prefixed", "unprefixed"]

# A statement gated on a condition: SQL with an ``{ok}`` placeholder (it writes only when that
# holds) and its parameters (named so as not to clash with others'). A before-commit hook's
# work in this form rides in a unit's lone last statement as a tail (``execute_guarded``).
GatedStatement = tuple[str, dict[str, Any]]

# Writes made with a statement: (table, row) inserts, (table, values, where) updates; values as
# column -> value with JSON columns as Python values.
Write = tuple[Table, Mapping[str, Any]] | tuple[Table, Mapping[str, Any], Mapping[str, Any]]
Writes = Sequence[Write]

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


def json_param(value: Any) -> str | None:
    """A JSON column's value as the drivers take it (SQL NULL for None)."""
    return None if value is None else orjson.dumps(value).decode()


class _Shape:
    """Which columns of a table need decoding when read directly."""

    __slots__ = ("booleans", "json")

    def __init__(self, table: Table) -> None:
        self.json = frozenset(c.name for c in table.columns if isinstance(c.type, JSON))
        self.booleans = frozenset(c.name for c in table.columns if isinstance(c.type, Boolean))


_SHAPES: dict[str, _Shape] = {}
_PG_SQL: dict[str, tuple[str, tuple[str, ...]]] = {}


def _shape(table: Table) -> _Shape:
    found = _SHAPES.get(table.name)
    if found is None:
        found = _SHAPES[table.name] = _Shape(table)
    return found


def _pg(sql: str) -> tuple[str, tuple[str, ...]]:
    found = _PG_SQL.get(sql)
    if found is None:
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        found = _PG_SQL[sql] = (_PARAM.sub(number, sql), tuple(names))
    return found


def decode(row: dict[str, Any], table: Table | None) -> dict[str, Any]:
    """``row`` (read directly) with ``table``'s JSON columns decoded and booleans as ``bool``,
    as SQLAlchemy would return them; for rows a statement assembled from several tables."""
    if table is None:
        return row
    shape = _shape(table)
    for name in shape.json:
        v = row.get(name)
        if isinstance(v, str | bytes):
            row[name] = orjson.loads(v)
    for name in shape.booleans:
        v = row.get(name)
        if v is not None:
            row[name] = bool(v)
    return row


def prefixed(alias: str, columns: Iterable[str]) -> str:
    """``alias``'s ``columns`` as ``alias."c" AS "alias_c"``: several tables' rows in one
    statement's result, taken apart again by :func:`unprefixed`."""
    return ", ".join(f'{alias}."{c}" AS "{alias}_{c}"' for c in columns)


def unprefixed(row: dict[str, Any], alias: str, columns: Iterable[str],
               table: Table | None) -> dict[str, Any]:
    """The columns :func:`prefixed` added for ``alias``, taken out of ``row`` and decoded."""
    return decode({c: row.pop(f"{alias}_{c}") for c in columns}, table)


def _encode(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    return dict(zip(row, _encoded(table, row), strict=True))


_STATEMENTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], str] = {}


def _insert_sql(table: Table, cols: tuple[str, ...]) -> str:
    key = ("insert", table.name, cols, ())
    sql = _STATEMENTS.get(key)
    if sql is None:
        names = ", ".join(f'"{c}"' for c in cols)
        sql = _STATEMENTS[key] = (f"INSERT INTO {table.name} ({names}) VALUES "
                                  f"({', '.join(':' + c for c in cols)})")
    return sql


def _update_params(table: Table, values: Mapping[str, Any], where: Mapping[str, Any],
                   tag: str = "") -> dict[str, Any]:
    params = dict(zip(_names(f"{tag}s_", tuple(values)), _encoded(table, values), strict=True))
    params.update(zip(_names(f"{tag}w_", tuple(where)), where.values(), strict=True))
    return params


_NAMES: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}


def _names(prefix: str, cols: tuple[str, ...]) -> tuple[str, ...]:
    """``prefix + column`` for each of ``cols``, made once per shape (a statement's rows
    repeat theirs): formatting every row's parameter names anew was ≈ 25 µs of a
    create+confirm's ``_with_writes`` calls (85 → 57 µs in all, timed in-process)."""
    key = (prefix, cols)
    found = _NAMES.get(key)
    if found is None:
        found = _NAMES[key] = tuple(prefix + c for c in cols)
    return found


def _encoded(table: Table, row: Mapping[str, Any]) -> list[Any]:
    """``row``'s values in its order, JSON columns encoded as the drivers take them."""
    json_cols = _shape(table).json
    return [json_param(v) if k in json_cols else v for k, v in row.items()]


def _statement(w: Write) -> tuple[str, dict[str, Any]]:
    """One write as a statement of its own and its parameters."""
    if len(w) == 3:
        return _update_sql(w[0], tuple(w[1]), tuple(w[2])), _update_params(w[0], w[1], w[2])
    return _insert_sql(w[0], tuple(w[1])), _encode(w[0], w[1])


def _with_writes(sql: str, params: Mapping[str, Any], writes: Writes
                 ) -> tuple[str, dict[str, Any]]:
    """``sql`` with ``writes`` in its ``WITH`` (PostgreSQL): rows that follow each other into
    the same table and columns share one multi-row INSERT, written in order."""
    # (table, columns, the update's where columns or None for inserts, the writes)
    groups: list[tuple[Table, tuple[str, ...], tuple[str, ...] | None, list[Write]]] = []
    for w in writes:
        cols, where = tuple(w[1]), (tuple(w[2]) if len(w) == 3 else None)
        if (where is None and groups and groups[-1][0] is w[0] and groups[-1][1] == cols
                and groups[-1][2] is None):
            groups[-1][3].append(w)
        else:
            groups.append((w[0], cols, where, [w]))
    merged = dict(params)
    for g, (table, _, _, items) in enumerate(groups):
        for r, w in enumerate(items):
            if len(w) == 3:
                merged.update(_update_params(table, w[1], w[2], f"i{g}_"))
            else:
                merged.update(zip(_names(f"i{g}_{r}_", tuple(w[1])), _encoded(table, w[1]),
                                  strict=True))
    key = (sql, tuple((t.name, cols, where, len(items)) for t, cols, where, items in groups))
    found = _WITH_WRITES.get(key)
    if found is None:
        ctes = []
        for g, (table, cols, where, items) in enumerate(groups):
            if where is not None:
                ctes.append(f"i{g} AS ({_update_sql(table, cols, where, f'i{g}_')})")
                continue
            values = ", ".join("(" + ", ".join(f":i{g}_{r}_{c}" for c in cols) + ")"
                               for r in range(len(items)))
            names = ", ".join(f'"{c}"' for c in cols)
            ctes.append(f"i{g} AS (INSERT INTO {table.name} ({names}) VALUES {values})")
        found = _WITH_WRITES[key] = (f"WITH {', '.join(ctes)}, {sql[5:]}"
                                     if sql.startswith("WITH ") else
                                     f"WITH {', '.join(ctes)} {sql}")
    return found, merged


_WITH_WRITES: dict[tuple[str, tuple[tuple[str, tuple[str, ...], tuple[str, ...] | None, int],
                                     ...]], str] = {}


def _update_sql(table: Table, cols: tuple[str, ...], where: tuple[str, ...], tag: str = ""
                ) -> str:
    key = ("update", table.name, cols, (*where, tag))
    sql = _STATEMENTS.get(key)
    if sql is None:
        sets = ", ".join(f'"{c}" = :{tag}s_{c}' for c in cols)
        conds = " AND ".join(f'"{c}" = :{tag}w_{c}' for c in where)
        sql = _STATEMENTS[key] = f"UPDATE {table.name} SET {sets} WHERE {conds}"
    return sql


# The folded statement's answer: the deferred first write's CTE ``f`` returns its row.
_FOLDED_RESULT = "SELECT * FROM f"


class Foldable(Protocol):
    """A unit of work's first write that can wait for its first statement (``Direct.defer``):
    ``run`` it in the unit's transaction, or ``fold`` it into the unit's only write: CTEs
    (``n``, ..., and ``f`` returning one row) and their parameters, whose names must not
    clash with the statement's (prefix them); then ``folded`` with ``f``'s row, or
    ``fold_failed`` with the unique violation that stopped the statement (it raises). Carried
    by the unit's first read instead (``Direct.fetchone(carry=True)``): ``joined`` with ``f``'s
    row, the unit still open, as after ``run``."""

    async def run(self, tx: AsyncConnection) -> None: ...

    def fold(self) -> tuple[str, dict[str, Any]]: ...

    def folded(self, row: Any) -> None: ...

    def fold_failed(self, exc: IntegrityError) -> None: ...

    def joined(self, row: Any) -> None: ...


# What a statement that runs alone (``Direct.execute_guarded``) casts to an integer when a guard
# missed: the cast fails, so the statement fails and nothing of it is written.
_GUARD_MISSED = "openpse: a guarded row changed"


class GuardMissed(RuntimeError):
    """A version-checked (guarded) update found its row changed since it was read: another
    transaction changed it. Nothing of the statement or unit was written. A lone statement
    (``execute_guarded(last=True)`` run alone) that PostgreSQL chose as a deadlock's victim
    raises it too: it was rolled back whole, and the caller's locked path decides again."""


def _as_update(w: Write) -> tuple[Table, Mapping[str, Any], Mapping[str, Any]]:
    if len(w) != 3:
        raise ValueError("a guard is an update: (table, values, where)")
    return w


_GuardShape = tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
_GUARDED: dict[tuple[str, _GuardShape], str] = {}
_ALONE: dict[tuple[str, _GuardShape, tuple[str, ...]], str] = {}


def _guard_params(guards: Sequence[Write], params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` and the guards' own (prefixed ``g0_``, ``g1_``, ...)."""
    merged = dict(params)
    for k, (table, values, where) in enumerate(_as_update(g) for g in guards):
        merged.update(_update_params(table, values, where, f"g{k}_"))
    return merged


def _guard_shape(guards: Sequence[Write]) -> _GuardShape:
    """What the guards' SQL depends on (a statement cache's key)."""
    return tuple((g[0].name, tuple(g[1]), tuple(_as_update(g)[2])) for g in guards)


def _guard_ctes(guards: Sequence[Write]) -> list[str]:
    """The guards as CTEs ``g0``, ``g1``, ...: updates returning a row per row changed."""
    return [f"g{k} AS ({_update_sql(table, tuple(values), tuple(where), f'g{k}_')} RETURNING 1)"
            for k, (table, values, where) in enumerate(_as_update(g) for g in guards)]


class Direct:
    """The driver connection of one pooled connection (one per pooled connection, reused)."""

    __slots__ = ("_adapter", "_async_commit", "_deferred", "_lite", "_sealed", "is_sqlite")

    def __init__(self, adapter: Any, lite: sqlite3.Connection | None) -> None:
        self._adapter = adapter
        self._lite = lite
        self.is_sqlite = lite is not None
        # A unit of work whose BEGIN and first write wait for its first statement (``defer``):
        # its connection and that first write; ``_sealed`` once the write that carried them
        # committed by itself (nothing may follow it).
        self._deferred: tuple[AsyncConnection, Foldable | None] | None = None
        self._sealed = False
        self._async_commit = False  # SQLite: this unit commits with synchronous=NORMAL

    def defer(self, conn: AsyncConnection, first: Foldable | None) -> None:
        """PostgreSQL: begin ``conn``'s unit of work at its first statement, not now, and run
        ``first`` (a deferred idempotency claim), if any, first in it then; unless that
        statement is the unit's last write (``execute_guarded(last=True)``), which then
        carries ``first`` and runs alone, in autocommit: one statement instead of BEGIN,
        ``first``, the write and COMMIT (on PostgreSQL a single statement is atomic by
        itself)."""
        self._deferred, self._sealed = (conn, first), False

    @property
    def can_run_alone(self) -> bool:
        """Whether the unit's next statement may be its only one: PostgreSQL, BEGIN still
        deferred with no first write (``Database.transaction(alone=True)``), nothing begun
        through SQLAlchemy either."""
        return (self._lite is None and self._deferred is not None
                and self._deferred[1] is None and self._adapter._transaction is None)

    @property
    def deferred(self) -> bool:
        """Whether the unit's BEGIN and first write still wait for a statement."""
        return self._deferred is not None

    def undefer(self) -> None:
        """End the deferral: the unit is over (the connection goes back for the next one)."""
        self._deferred, self._sealed = None, False

    async def begin_deferred(self) -> None:
        """Begin the deferred unit now: BEGIN, then its first write. Refuses a statement after
        the unit's last (it committed by itself: a later one would not commit with it)."""
        if self._sealed:
            raise RuntimeError("a statement after the unit's last write, which committed alone")
        if self._deferred is not None:
            (conn, first), self._deferred = self._deferred, None
            await self.begin_unit()
            if first is not None:
                await first.run(conn)

    async def begin(self) -> None:
        """Open the SQLAlchemy connection's transaction now (PostgreSQL). SQLAlchemy's asyncpg
        adapter opens it lazily at its first statement; ``Database.transaction()`` calls this
        so direct statements are inside it even when they run first. Outside a transaction
        (``Database.read()``), a direct statement runs on its own, as a single-statement
        read."""
        adapter = self._adapter
        if (self._lite is None and adapter._transaction is None
                and adapter.isolation_level != "autocommit"):
            await adapter._start_transaction()

    async def begin_unit(self, *, async_commit: bool = False) -> None:
        """BEGIN a unit of work on the driver (``Database._unit``), not through SQLAlchemy's
        transaction (its begin and commit pass through greenlets: ≈ 50 µs of CPU a
        transaction). SQLite: BEGIN IMMEDIATE (the write lock, now); PostgreSQL: the adapter's
        transaction, which a statement through SQLAlchemy then joins. ``async_commit``
        (SQLite; ``Database.write_async_commit``): the unit's COMMIT will not wait for the disk
        (``synchronous=NORMAL``, which SQLite lets change only outside a transaction, so
        here; :meth:`end_async_commit` sets it back)."""
        if self._lite is not None:
            if async_commit:
                self._lite.execute("PRAGMA synchronous=NORMAL")
                self._async_commit = True
            self._lite.execute("BEGIN IMMEDIATE")
        else:
            await self.begin()

    @property
    def in_transaction(self) -> bool:
        """Whether the driver connection has a transaction open."""
        if self._lite is not None:
            return self._lite.in_transaction
        return self._adapter._transaction is not None

    async def commit_unit(self) -> None:
        """COMMIT the driver's open transaction, if any (SQLite: on the connection's commit
        thread, storage/inline_sqlite.py)."""
        if self._lite is not None:
            if self._async_commit:  # no fsync to wait for: inline, no hop to the commit thread
                self._adapter._connection.commit_inline()
            else:
                await self._adapter._connection.commit()
            return
        tr, self._adapter._transaction = self._adapter._transaction, None
        if tr is not None:
            try:
                await tr.commit()
            except _PG_INTEGRITY as exc:  # a deferred constraint: as SQLAlchemy would raise
                raise IntegrityError("COMMIT", None, exc) from exc

    async def rollback_unit(self) -> None:
        """ROLLBACK the driver's open transaction, if any."""
        if self._lite is not None:
            if self._lite.in_transaction:
                self._lite.rollback()
            return
        tr, self._adapter._transaction = self._adapter._transaction, None
        if tr is not None:
            await tr.rollback()

    def end_async_commit(self) -> None:
        """SQLite: set the connection's commits back to durable once an ``async_commit`` unit
        ended, committed or not (``Database._unit`` calls it last; outside the transaction:
        inside one SQLite refuses the change)."""
        if self._async_commit and self._lite is not None:
            self._lite.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
            self._async_commit = False

    async def _pg_conn(self) -> Any:
        return self._adapter._connection

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None, *,
                      writes: Writes = ()) -> int:
        """Run one statement (with ``writes``, see the module's doc); the number of rows it
        changed."""
        if self._deferred is not None or self._sealed:
            await self.begin_deferred()
        try:
            if self._lite is not None:
                for w in writes:
                    self._lite.execute(*_statement(w))
                before = self._lite.total_changes
                count = self._lite.execute(sql, params or {}).rowcount
                # sqlite3 reports -1 for a statement it does not see as DML (WITH ... INSERT)
                return count if count >= 0 else self._lite.total_changes - before
            if writes:
                sql, params = _with_writes(sql, params or {}, writes)
            text, names = _pg(sql)
            args = [params[n] for n in names] if params else []
            status = await (await self._pg_conn()).execute(text, *args)
        except (sqlite3.IntegrityError, _PG_INTEGRITY) as exc:
            raise IntegrityError(sql, params, exc) from exc
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def execute_guarded(self, sql: str, params: Mapping[str, Any] | None = None, *,
                              writes: Writes = (), guards: Sequence[Write] = (),
                              last: bool = False,
                              tails: Sequence[GatedStatement] = ()) -> list[int]:
        """:meth:`execute` with ``guards``: updates ``(table, values, where)`` made with it whose
        row counts it returns, in order (a version-checked update's count is its lost-update
        guard: the caller raises, rolling the transaction back, unless it is 1). PostgreSQL:
        one statement (``sql``, which must not have a WITH of its own, runs in its WITH too);
        SQLite: the guards, then the writes, then ``sql``. ``last``: the caller's unit of work
        writes nothing after this and has nothing to run before its commit; if its BEGIN is
        still deferred (``defer``) and there are no guards to check, the deferred first write
        rides in this statement, which commits by itself. With no first write
        (``can_run_alone``) the statement runs alone with its guards, which it checks itself:
        it fails, writing nothing, if one missed (``GuardMissed``); it updates (and locks) the
        guards' rows in the order given, so give them in the order other writers lock them; and
        ``tails`` (``GatedStatement``s) run in it after the guards' updates, only when they all
        hit: what was to run before the commit (``db.take_before_commit``)."""
        if last and self.can_run_alone and not sql.startswith("WITH"):
            return await self._alone(sql, params or {}, writes, guards, tails)
        if tails:
            raise ValueError("a tail rides only in a statement that runs alone")
        if (last and self._deferred is not None and not guards and not sql.startswith("WITH")
                and self._adapter._transaction is None):
            await self._folded(sql, params or {}, writes)
            return []
        if self._lite is not None or not guards:
            counts = [await self.write(g) for g in guards]
            await self.execute(sql, params, writes=writes)
            return counts
        merged = _guard_params(guards, params or {})
        key = (sql, _guard_shape(guards))
        text = _GUARDED.get(key)
        if text is None:
            ctes = _guard_ctes(guards)
            counts_sql = ", ".join(f"(SELECT count(*) FROM g{k})" for k in range(len(guards)))
            text = _GUARDED[key] = (f"WITH {', '.join(ctes)}, m AS ({sql}) "
                                    f"SELECT {counts_sql}")
        full, merged = _with_writes(text, merged, writes) if writes else (text, merged)
        if self._deferred is not None or self._sealed:
            await self.begin_deferred()
        pg, names = _pg(full)
        try:
            record = await (await self._pg_conn()).fetchrow(pg, *[merged[n] for n in names])
        except _PG_INTEGRITY as exc:
            raise IntegrityError(full, merged, exc) from exc
        return [int(c) for c in record]

    async def _alone(self, sql: str, params: Mapping[str, Any], writes: Writes,
                     guards: Sequence[Write], tails: Sequence[GatedStatement]) -> list[int]:
        """``execute_guarded(last=True)`` as the unit's only statement, in autocommit."""
        merged = _guard_params(guards, params)
        tail_sql = tuple(t[0] for t in tails)
        key = (sql, _guard_shape(guards), tail_sql)
        text = _ALONE.get(key)
        if text is None:
            ctes = _guard_ctes(guards)
            ok = " AND ".join(f"(SELECT count(*) FROM g{k}) = 1" for k in range(len(guards)))
            ok = ok or "TRUE"
            ctes.append(f"m AS ({sql})")
            # after the guards' updates (they read them), so in the same lock order
            ctes += [f"t{i} AS ({t.replace('{ok}', ok)})" for i, t in enumerate(tail_sql)]
            # A missed guard fails the cast at run time (the condition is not a constant, so
            # the planner cannot fold it): the statement fails, and with it everything in it.
            text = _ALONE[key] = (f"WITH {', '.join(ctes)} SELECT CAST(CASE WHEN {ok} THEN '1' "
                                  f"ELSE '{_GUARD_MISSED}' END AS integer)")
        for _, tail_params in tails:
            merged.update(tail_params)
        full, merged = _with_writes(text, merged, writes) if writes else (text, merged)
        self._deferred = None  # the unit is this statement, whatever its outcome
        pg, names = _pg(full)
        try:
            await (await self._pg_conn()).fetchrow(pg, *[merged[n] for n in names])
        except _PG_INTEGRITY as exc:
            raise IntegrityError(full, merged, exc) from exc
        except _PG_BAD_TEXT as exc:
            if _GUARD_MISSED in str(exc):
                missed = [dict(_as_update(g)[2]) for g in guards]
                raise GuardMissed(f"a guarded update missed: {missed}") from exc
            raise
        except _PG_DEADLOCK as exc:  # the statement was the victim: nothing of it is written
            raise GuardMissed(f"a deadlock's victim, rolled back: {exc}") from exc
        self._sealed = True
        return [1] * len(guards)

    async def _folded(self, sql: str, params: Mapping[str, Any], writes: Writes) -> None:
        """``sql`` and ``writes`` with the deferred first write's CTEs in front, in autocommit:
        one statement, atomic by itself, that commits the unit (see ``defer``)."""
        assert self._deferred is not None
        (_, first), self._deferred = self._deferred, None
        assert first is not None
        ctes, first_params = first.fold()
        main = f"WITH m AS ({sql}) {_FOLDED_RESULT}"
        text, merged = _with_writes(main, params, writes) if writes else (main, dict(params))
        text = f"WITH {ctes}, {text[5:]}"
        merged.update(first_params)
        record = await self._carrying(first, text, merged)
        self._sealed = True
        first.folded(record)

    async def _carrying(self, first: Foldable, text: str, params: Mapping[str, Any]) -> Any:
        """Run ``text``, which carries ``first``'s CTEs: its one row, or ``first``'s refusal
        of the unique violation that stopped it (``fold_failed``; another table's re-raised)."""
        pg, names = _pg(text)
        try:
            return await (await self._pg_conn()).fetchrow(pg, *[params[n] for n in names])
        except _PG_INTEGRITY as exc:
            err = IntegrityError(text, params, exc)
            first.fold_failed(err)  # raises for its own tables
            raise err from exc

    async def executemany(self, sql: str, rows: Iterable[Mapping[str, Any]]) -> None:
        if self._deferred is not None or self._sealed:
            await self.begin_deferred()
        try:
            if self._lite is not None:
                self._lite.executemany(sql, rows)
                return
            text, names = _pg(sql)
            await (await self._pg_conn()).executemany(text, [[r[n] for n in names]
                                                             for r in rows])
        except (sqlite3.IntegrityError, _PG_INTEGRITY) as exc:
            raise IntegrityError(sql, None, exc) from exc

    async def fetchall(self, sql: str, params: Mapping[str, Any] | None = None, *,
                       table: Table | None = None) -> list[dict[str, Any]]:
        if self._deferred is not None or self._sealed:
            await self.begin_deferred()
        try:
            if self._lite is not None:
                cur = self._lite.execute(sql, params or {})
                cols = [d[0] for d in cur.description]
                return [decode(dict(zip(cols, r, strict=True)), table) for r in cur.fetchall()]
            text, names = _pg(sql)
            args = [params[n] for n in names] if params else []
            records = await (await self._pg_conn()).fetch(text, *args)
        except (sqlite3.IntegrityError, _PG_INTEGRITY) as exc:
            raise IntegrityError(sql, params, exc) from exc
        return [decode(dict(r), table) for r in records]

    async def fetchone(self, sql: str, params: Mapping[str, Any] | None = None, *,
                       table: Table | None = None, carry: bool = False
                       ) -> dict[str, Any] | None:
        """One row or None. ``carry``: if this is the unit's first statement and its first
        write waits for it (PostgreSQL, ``defer``: a deferred idempotency claim), BEGIN, then
        this read with that write's CTEs in front: one round trip fewer than BEGIN, the write,
        the read. ``sql`` must be one row's SELECT (a locking one too) without a WITH."""
        if (carry and self._lite is None and not self._sealed and self._deferred is not None
                and self._deferred[1] is not None and not sql.startswith("WITH")):
            return await self._carried(sql, params or {}, table)
        rows = await self.fetchall(sql, params, table=table)
        return rows[0] if rows else None

    async def _carried(self, sql: str, params: Mapping[str, Any], table: Table | None
                       ) -> dict[str, Any] | None:
        """``fetchone(carry=True)``: the first write's ``f`` is one row, so the read joins it
        from the right (``f`` LEFT JOIN the read): a row even when the read finds none."""
        assert self._deferred is not None
        (_, first), self._deferred = self._deferred, None
        assert first is not None
        await self.begin_unit()
        ctes, first_params = first.fold()
        text = (f'WITH {ctes} SELECT to_json(f) AS "f__row", q.* FROM f '
                f"LEFT JOIN ({sql}) q ON true")
        row = dict(await self._carrying(first, text, {**params, **first_params}))
        first.joined(row.pop("f__row"))  # JSON, decoded by the connection's codec
        if all(v is None for v in row.values()):
            return None  # the read found nothing (each of its rows has a non-null key)
        return decode(row, table)

    async def insert(self, table: Table, row: Mapping[str, Any]) -> None:
        """Insert one row given as column -> value (JSON columns as Python values)."""
        await self.write((table, row))

    async def write_all(self, writes: Writes) -> None:
        """Make ``writes`` together: one statement on PostgreSQL (each in its WITH; a
        data-modifying WITH runs whether or not it is read), in order on SQLite."""
        if self._lite is not None:
            for w in writes:
                await self.write(w)
        elif writes:
            await self.execute("SELECT 1", writes=writes)

    async def write(self, w: Write) -> int:
        """One of ``writes`` on its own (an insert or an update); the rows it changed."""
        return await self.execute(*_statement(w))

    async def update(self, table: Table, values: Mapping[str, Any],
                     where: Mapping[str, Any]) -> int:
        """``UPDATE table SET values WHERE`` every ``where`` column equals its value; the
        number of rows changed."""
        return await self.write((table, values, where))


_KEY = "openpse_direct"


def direct(conn: AsyncConnection) -> Direct:
    """The :class:`Direct` handle of ``conn``'s driver connection (same transaction). Kept in
    the connection's ``info``, which SQLAlchemy clears when the driver connection is
    replaced."""
    info = conn.info
    found = info.get(_KEY)
    if found is None:
        fairy = conn.sync_connection.connection if conn.sync_connection else None
        if fairy is None:
            raise RuntimeError("direct() needs a connected AsyncConnection")
        lite = getattr(fairy.driver_connection, "raw", None)
        found = info[_KEY] = Direct(fairy.dbapi_connection,
                                    lite if isinstance(lite, sqlite3.Connection) else None)
    assert isinstance(found, Direct)
    return found
