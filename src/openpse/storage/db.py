"""Database access: engines, the unit of work, and the backend differences in one place.

PostgreSQL: one async engine (asyncpg); concurrency is handled by row locks
(``SELECT ... FOR UPDATE``) and unique constraints.

SQLite: WAL, ``synchronous=FULL`` (durable), and exactly one writer per process: write
transactions queue for its one writer connection (a semaphore of one) and open with
``BEGIN IMMEDIATE``, so two writers in different processes wait for each other instead of
failing half-way: on a file lock a helper thread waits for (storage/sqlite_lock.py), so the
waiting process's event loop keeps serving; ``busy_timeout`` for writers that do not take it.
Reads use a separate small pool and never block on the writer (WAL readers see the last commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, cast

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from openpse.storage.direct import Foldable, GatedStatement, Write, direct
from openpse.storage.inline_sqlite import SQLITE_SYNCHRONOUS, inline_creator
from openpse.storage.key_cache import KeyCache
from openpse.storage.sqlite_lock import WriterFileLock, lock_path_for

__all__ = ["Database", "FirstWrite", "Tx", "asyncpg_dsn", "before_commit", "first_write",
           "on_rollback"]

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_READERS = 4
SQLITE_POOL_TIMEOUT_S = 60
PG_WRITERS = 10  # write connections kept open (of the pool)
# PostgreSQL: the statement write_async_commit's write rides in (in its WITH). set_config(...,
# true) is SET LOCAL: it lasts until that statement's own transaction ends, which is after its
# commit record was written with the setting in force.
_ASYNC_COMMIT_SQL = "SELECT set_config('synchronous_commit', 'off', true)"
PG_POOL_SIZE = 20  # writers + readers
PG_POOL_OVERFLOW = 10
PG_STATEMENT_TIMEOUT_MS = 30_000

Tx = AsyncConnection
# Key of ``conn.info`` holding facts valid for one transaction only (cleared at each begin).
TX_SCOPED_INFO = "openpse_tx"
# In TX_SCOPED_INFO: coroutines ``hook(conn)`` run last, just before the commit (the ledger
# applies balance changes there, so hot account rows stay locked only for the commit).
BEFORE_COMMIT = "before_commit"
# In TX_SCOPED_INFO: plain callables ``hook()`` run when the unit does not commit (or its
# commit's outcome is unknown): to take back what the caller believed written.
ON_ROLLBACK = "on_rollback"
# In TX_SCOPED_INFO: set when the unit updated or deleted access keys or merchants (through
# SQLAlchemy, as every such change does): this process's key cache is dropped after the commit.
AUTH_CHANGED = "auth_changed"
_AUTH_CHANGE = re.compile(r"\s*(?:UPDATE|DELETE\s+FROM)\s+(?:access_keys|merchants)\b",
                          re.IGNORECASE)


class FirstWrite(Protocol):
    """Statements to run first in the next write transaction of this context (a request's
    deferred idempotency claim, see api/idempotency.py): ``take`` says whether they are still
    to run (and reserves them), then ``run`` executes them in that transaction, and
    ``committed`` or ``rolled_back`` reports how the transaction ended."""

    def take(self) -> bool: ...

    def pending(self) -> bool:
        """Still to run (``take`` would reserve them); reserves nothing."""
        ...

    async def run(self, tx: AsyncConnection) -> None: ...

    def committed(self) -> None: ...

    def rolled_back(self) -> None: ...


_FIRST_WRITE: ContextVar[FirstWrite | None] = ContextVar("openpse_first_write", default=None)


@contextmanager
def first_write(hook: FirstWrite) -> Iterator[None]:
    """Within this block (this task and what it awaits), ``hook`` runs at the start of the
    first write transaction; if that one rolls back, at the start of the next."""
    token = _FIRST_WRITE.set(hook)
    try:
        yield
    finally:
        _FIRST_WRITE.reset(token)


_AS_STATEMENT = "before_commit_as_statement"


def before_commit(conn: AsyncConnection, hook: Callable[[AsyncConnection], Awaitable[None]],
                  *, as_statement: Callable[[AsyncConnection], GatedStatement | None] | None
                  = None) -> None:
    """Run ``hook`` at the end of ``conn``'s current write transaction (once per call).
    ``as_statement``: the same work as a statement instead (None: nothing to do after all),
    for a unit whose last write commits by itself (``take_before_commit``)."""
    scoped = conn.info.setdefault(TX_SCOPED_INFO, {})
    scoped.setdefault(BEFORE_COMMIT, []).append(hook)
    scoped.setdefault(_AS_STATEMENT, []).append(as_statement)


def on_rollback(conn: AsyncConnection, hook: Callable[[], None]) -> None:
    """Call ``hook`` if ``conn``'s current write transaction does not commit: an error in it,
    a lone statement that failed (``GuardMissed``), or a commit whose outcome is unknown. For
    state kept outside the database that describes what the transaction wrote."""
    conn.info.setdefault(TX_SCOPED_INFO, {}).setdefault(ON_ROLLBACK, []).append(hook)


def take_before_commit(conn: AsyncConnection) -> list[GatedStatement] | None:
    """The transaction's before-commit work as statements for its last write to carry
    (``Direct.execute_guarded``'s ``tails``), taken off the commit; None, leaving it all to
    the commit, when some of it has no statement form."""
    scoped = conn.info.get(TX_SCOPED_INFO, {})
    forms = scoped.get(_AS_STATEMENT, [])
    if None in forms:
        return None
    statements = [st for form in forms if (st := form(conn)) is not None]
    scoped.pop(BEFORE_COMMIT, None)
    scoped.pop(_AS_STATEMENT, None)
    return statements


class Database:
    """Owns the engines. ``transaction()`` is the unit of work: commit, or roll back on error."""

    def __init__(self, url: str, *, echo: bool = False, key_cache: bool = True) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        # PostgreSQL: access keys kept in the process until a notification says they changed
        # (storage/key_cache.py); it listens only once something asks it for a key.
        self.key_cache: KeyCache | None = None
        if key_cache and not self.is_sqlite:
            self.key_cache = KeyCache(asyncpg_dsn(url))
        self._idle_writers: list[tuple[AsyncConnection, float]] = []
        self._writers_open = 0
        # Read connections kept open between reads, as the writers are (at most this many).
        self._idle_readers: list[tuple[AsyncConnection, float]] = []
        self._readers_kept = SQLITE_READERS if self.is_sqlite else PG_POOL_SIZE - PG_WRITERS
        # Waiters are served in order, one per connection returned.
        self._writer_slots = asyncio.Semaphore(1 if self.is_sqlite else PG_WRITERS)
        # SQLite: the write lock between processes, taken without stalling the loop.
        self._file_lock: WriterFileLock | None = None
        if self.is_sqlite:
            # One long-lived writer connection (the single writer), a few readers. Opening a
            # connection per unit of work costs a thread and the PRAGMAs each time.
            # Statements run inline on the event loop (storage/inline_sqlite.py): no thread hop
            # per statement, and the write lock is held only while real work is done. WAL
            # readers never wait for the writer, so inline reads do not stall the loop either.
            path = make_url(url).database or ""
            lock_path = lock_path_for(path)
            if lock_path is not None:
                self._file_lock = WriterFileLock(lock_path,
                                                 timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
            self.engine = create_async_engine(
                url, echo=echo, pool_size=1, max_overflow=0, pool_timeout=SQLITE_POOL_TIMEOUT_S,
                json_deserializer=orjson.loads,
                async_creator=inline_creator(
                    path, None if self._file_lock is None else self._file_lock.release),
            )
            self.read_engine = create_async_engine(
                url,
                echo=echo,
                json_deserializer=orjson.loads,
                pool_size=SQLITE_READERS,
                max_overflow=0,
                pool_timeout=SQLITE_POOL_TIMEOUT_S,
                async_creator=inline_creator(path),
            )
            _configure_sqlite(self.engine, immediate=True)
            _configure_sqlite(self.read_engine, immediate=False)
        else:
            self.engine = create_async_engine(
                url,
                echo=echo,
                # JSON columns read through SQLAlchemy decoded as the direct path decodes
                # them (orjson: a payment method 3.5 -> 1.0 us against the standard library).
                json_deserializer=orjson.loads,
                pool_size=PG_POOL_SIZE,
                max_overflow=PG_POOL_OVERFLOW,
                # A ping costs three round trips (SQLAlchemy's asyncpg ping opens a
                # transaction); only connections idle for a while are pinged (_ping_idle).
                pool_pre_ping=False,
                connect_args={
                    "server_settings": {
                        "statement_timeout": str(PG_STATEMENT_TIMEOUT_MS),
                        "timezone": "UTC",
                    }
                },
            )
            self.read_engine = self.engine
            _ping_idle(self.engine)
            _mark_auth_changes(self.engine)

    @asynccontextmanager
    async def transaction(self, *, alone: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction. Everything done on the yielded connection commits together.
        On SQLite the one writer slot is the single-writer lock. ``alone`` (PostgreSQL; for a
        unit that mostly writes once, at its end): BEGIN waits for the first statement, and
        if that is the unit's last write (``Direct.execute_guarded(last=True)``) it runs alone
        in autocommit, checking its own guards: no BEGIN and COMMIT round trips."""
        async with self._unit(alone=alone) as conn:
            yield conn

    async def write_async_commit(self, w: Write) -> None:
        """One insert or update, a transaction by itself, whose commit does not wait for the
        disk: it is visible at once and durable once any later commit on this database that
        does wait (every other commit of OpenPSE's) is, because both backends keep commits in
        order. A crash of the machine (not of a process) can lose it only together with every
        commit after it, as if it had not run. PostgreSQL: asynchronous commit
        (``synchronous_commit`` off for this statement's own transaction, set inside it, in
        autocommit). SQLite (WAL): ``synchronous=NORMAL`` for this transaction only, its COMMIT
        inline (no fsync to wait for), then back to ``FULL``.

        For writes that stand in for another system's books and that OpenPSE's next durable
        commit follows (the sandbox acquirer's record, connectors/simulator): never for
        OpenPSE's own state, whose commits stay durable. A unique-key violation raises
        ``IntegrityError`` as any write does. While a deferred first write is still to
        run in this context (it must share a transaction) it commits durably with it."""
        first = _FIRST_WRITE.get()
        shared = first is not None and first.pending()
        if self.is_sqlite or shared:
            async with self._unit(async_commit=self.is_sqlite and not shared) as conn:
                await direct(conn).write(w)
            return
        async with self._writer_slots:
            conn = await self._checkout()
            try:
                await direct(conn).execute(_ASYNC_COMMIT_SQL, writes=(w,))
            finally:
                await self._give_back(conn)

    @asynccontextmanager
    async def _unit(self, *, alone: bool = False,
                    async_commit: bool = False) -> AsyncIterator[AsyncConnection]:
        # Write transactions run on connections this object keeps open (checking one out of
        # the engine's pool and resetting it on return cost more than many statements).
        async with self._writer_slots, self._between_processes():
            conn = await self._checkout()
            first = _FIRST_WRITE.get()
            if first is not None and not first.take():
                first = None
            d = direct(conn)
            committing = False
            # A new scope per unit, held here: conn.info may be out of reach once the
            # connection failed.
            scoped: dict[str, Any] = {}
            conn.info[TX_SCOPED_INFO] = scoped
            try:
                if first is not None and not self.is_sqlite and hasattr(first, "fold"):
                    # BEGIN and the claim wait for the unit's first statement; if that is its
                    # last write, they ride in it (Direct.defer): one round trip.
                    d.defer(conn, cast(Foldable, first))
                elif first is None and alone and not self.is_sqlite:
                    d.defer(conn, None)  # see transaction(alone=True)
                else:
                    # BEGIN on the driver now (not through SQLAlchemy's transaction: its
                    # greenlets cost more than a small statement): statements run directly
                    # (storage/direct.py) are inside it whatever runs first, and one through
                    # SQLAlchemy joins it (its autobegin issues no second BEGIN: _on_begin).
                    await d.begin_unit(async_commit=async_commit)
                    if first is not None:
                        await first.run(conn)
                yield conn
                if d.deferred:  # nothing ran directly: BEGIN and the claim now
                    await d.begin_deferred()
                for hook in scoped.get(BEFORE_COMMIT, ()):
                    await hook(conn)
                committing = True
                if conn.in_transaction():  # SQLAlchemy's bookkeeping too: its commit ends both
                    await conn.commit()
                else:
                    await d.commit_unit()
                if first is not None:
                    first.committed()
                    first = None
                if scoped.get(AUTH_CHANGED) and self.key_cache is not None:
                    self.key_cache.changed()  # before anyone hears of the change from us
            except BaseException:
                for undo in scoped.get(ON_ROLLBACK, ()):
                    undo()
                with contextlib.suppress(Exception):
                    if committing:  # unknown state: the connection is not reused
                        await conn.invalidate()
                    elif conn.in_transaction():
                        await conn.rollback()
                    else:
                        await d.rollback_unit()
                raise
            finally:
                d.undefer()
                if async_commit:  # the connection goes back durable, whatever happened
                    with contextlib.suppress(Exception):
                        d.end_async_commit()
                if first is not None:
                    first.rolled_back()
                await self._give_back(conn)

    @asynccontextmanager
    async def _between_processes(self) -> AsyncIterator[None]:
        """SQLite: hold the file lock that orders writers of all processes (sqlite_lock.py)
        for the whole transaction, the commit's wait for the disk included."""
        lock = self._file_lock
        if lock is None:
            yield
            return
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()

    async def _give_back(self, conn: AsyncConnection) -> None:
        """Keep a write connection for the next writer, or close one that is broken or was
        interrupted mid-rollback (a new one replaces it)."""
        if (conn.closed or conn.invalidated or conn.in_transaction()
                or direct(conn).in_transaction):
            self._writers_open -= 1
            with contextlib.suppress(Exception):
                await conn.close()
        else:
            self._idle_writers.append((conn, time.monotonic()))

    async def _checkout(self) -> AsyncConnection:
        """An open write connection (the caller holds a writer slot)."""
        conn, dropped = await _live_idle(self._idle_writers)
        self._writers_open -= dropped
        if conn is not None:
            return conn
        self._writers_open += 1
        try:
            return await self.engine.connect()
        except BaseException:
            self._writers_open -= 1
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (never blocks behind the SQLite writer). Read connections are
        kept open between reads like the writers (a pool checkout and return cost ≈ 0.1 ms of
        CPU, as much as a read); a transaction a read began is rolled back when it ends."""
        conn = await self._checkout_reader()
        try:
            yield conn
        finally:
            await self._give_back_reader(conn)

    async def _checkout_reader(self) -> AsyncConnection:
        conn, _ = await _live_idle(self._idle_readers)
        return conn if conn is not None else await self.read_engine.connect()

    async def _give_back_reader(self, conn: AsyncConnection) -> None:
        """Keep a read connection for the next read, ended cleanly; close (return to the
        pool) one that is broken, still in a transaction, or one too many."""
        try:
            if not (conn.closed or conn.invalidated) and conn.in_transaction():
                await conn.rollback()
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        if (conn.closed or conn.invalidated or conn.in_transaction()
                or len(self._idle_readers) >= self._readers_kept):
            with contextlib.suppress(Exception):
                await conn.close()
        else:
            self._idle_readers.append((conn, time.monotonic()))

    async def ping(self) -> bool:
        try:
            async with self.read() as conn:
                await conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        if self.key_cache is not None:
            await self.key_cache.close()
        while self._idle_readers:
            conn, _ = self._idle_readers.pop()
            with contextlib.suppress(Exception):
                await conn.close()
        while self._idle_writers:
            conn, _ = self._idle_writers.pop()
            self._writers_open -= 1
            with contextlib.suppress(Exception):
                await conn.close()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def asyncpg_dsn(url: str) -> str:
    """A PostgreSQL URL (any SQLAlchemy driver) as a DSN asyncpg connects with on its own."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _mark_auth_changes(engine: AsyncEngine) -> None:
    """Mark a unit that updates or deletes access keys or merchants (AUTH_CHANGED)."""

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _mark(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement[:1] in "UuDd" and _AUTH_CHANGE.match(statement):
            scoped = conn.info.get(TX_SCOPED_INFO)
            if scoped is not None:
                scoped[AUTH_CHANGED] = True


PING_IDLE_AFTER_S = 10.0


async def _live_idle(idle: list[tuple[AsyncConnection, float]]
                     ) -> tuple[AsyncConnection | None, int]:
    """The most recently kept connection of ``idle`` that is alive (one idle for
    ``PING_IDLE_AFTER_S`` is pinged first), or None; and how many dead ones were closed."""
    dropped = 0
    while idle:
        conn, since = idle.pop()
        if time.monotonic() - since < PING_IDLE_AFTER_S or await _alive(conn):
            return conn, dropped
        dropped += 1
        with contextlib.suppress(Exception):
            await conn.close()
    return None, dropped


async def _alive(conn: AsyncConnection) -> bool:
    try:
        await conn.exec_driver_sql("SELECT 1")
        await conn.rollback()
        return True
    except Exception:
        return False


def _ping_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only when it sat idle (a restarted server or a
    dropped connection shows up there); a busy pool pays nothing. A dead one is replaced."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["openpse_idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("openpse_idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_AFTER_S:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:
            raise DisconnectionError("pooled connection failed its ping") from exc


def _configure_sqlite(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        if dbapi_conn.isolation_level is not None:
            dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Straight on sqlite3 (the inline connection): a statement through SQLAlchemy here
        # cost more than the rest of a small transaction. A unit of work began on the driver
        # already (Direct.begin_unit): SQLAlchemy's autobegin joins it.
        raw = conn.connection.driver_connection.raw
        if not raw.in_transaction:
            raw.execute(begin)
