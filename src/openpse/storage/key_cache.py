"""PostgreSQL: the access keys this process has read, kept until any process changes them.

Every signed request reads its access key (with the merchant's status and terms). On
PostgreSQL that read is a round trip, one of four in a create+confirm and one of two in a
GET, and a round trip costs the API process about 50 µs of system time in ``write`` alone
(docs/performance.md, finding 11). So each API process keeps the rows it has read, and drops
one the moment it hears that it changed:

- migration 0008's triggers announce every UPDATE, DELETE or TRUNCATE of ``access_keys`` and
  ``merchants`` on channel ``openpse_auth`` (``<table>:<id>``, ``<table>:*``), at commit, in
  the changing transaction, whichever process, CLI or hand-written SQL made it;
- one connection per process LISTENs; each notification drops what it names (a merchant's:
  every key of that merchant) and bumps ``epoch``;
- a row is kept only if no notification (and no local change) arrived while it was being
  read (``token`` before the read, ``put`` after): a change that commits mid-read is never
  lost;
- while the listening connection is down, or before it is up, nothing is kept or served from
  here: every request reads, as without a cache. It reconnects on a later request
  (``RETRY_S`` apart). It counts as up only once it heard a probe another session sent
  (through PgBouncer in transaction mode a LISTEN hears nothing: the cache then stays off);
- this process's own changes drop everything at once after their commit
  (``Database._unit``: a statement that updates or deletes those tables marks its unit),
  without waiting for the notification.

A change made by another process reaches this one after the notification's delay, typically
well under a millisecond on one host: a request already being authenticated then may still
pass with the old row, as it could have read it a moment earlier anyway.

SQLite has no notifications, and its read is no round trip (a few µs in-process): no cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from typing import Any

__all__ = ["CHANNEL", "KeyCache", "listener_name"]

CHANNEL = "openpse_auth"
MAX_KEYS = 10_000
RETRY_S = 5.0
LISTENER_NAME = "openpse-key-cache"  # the listening connection's application_name: ":<pid>"
PROBE_TIMEOUT_S = 2.0


def listener_name(pid: int | None = None) -> str:
    """The ``application_name`` of process ``pid``'s listening connection (this one's)."""
    return f"{LISTENER_NAME}:{os.getpid() if pid is None else pid}"


class KeyCache:
    def __init__(self, dsn: str, *, max_keys: int = MAX_KEYS, retry_s: float = RETRY_S) -> None:
        self._dsn = dsn
        self._max = max_keys
        self._retry_s = retry_s
        self._rows: dict[str, dict[str, Any]] = {}
        self._by_merchant: dict[str, set[str]] = {}
        self.epoch = 0
        self._conn: Any = None  # the listening asyncpg connection, once LISTEN is in force
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self.closed = False

    # ---- reads -------------------------------------------------------------------------

    def listening(self) -> bool:
        """Whether notifications reach this process now (on this event loop)."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def get(self, key_id: str) -> dict[str, Any] | None:
        """The kept row of ``key_id`` (callers must not change it), or None: read it."""
        if not self.listening():
            self._start_listening()
            return None
        return self._rows.get(key_id)

    def token(self) -> int | None:
        """Taken before reading a row, given back to :meth:`put` after."""
        return self.epoch if self.listening() else None

    def put(self, key_id: str, row: dict[str, Any], token: int | None) -> None:
        """Keep ``row`` if nothing changed since ``token`` was taken (and notifications
        still arrive)."""
        if token is None or token != self.epoch or not self.listening():
            return
        if len(self._rows) >= self._max:
            self._drop_all()
        self._rows[key_id] = row
        self._by_merchant.setdefault(row["merchant_id"], set()).add(key_id)

    # ---- changes -----------------------------------------------------------------------

    def changed(self) -> None:
        """This process changed keys or merchants (after its commit): drop everything."""
        self._drop_all()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        table, _, ident = payload.partition(":")
        if ident == "*":
            self._drop_all()
            return
        self.epoch += 1
        if table == "access_keys":
            row = self._rows.pop(ident, None)
            if row is not None:
                self._by_merchant.get(row["merchant_id"], set()).discard(ident)
        elif table == "merchants":  # every key of it (its status and terms ride in each row)
            for key_id in self._by_merchant.pop(ident, ()):
                self._rows.pop(key_id, None)

    def _drop_all(self) -> None:
        self.epoch += 1
        self._rows.clear()
        self._by_merchant.clear()

    # ---- the listening connection ------------------------------------------------------

    def _start_listening(self) -> None:
        if self.closed or self._connecting is not None or time.monotonic() < self._retry_at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._connecting = loop.create_task(self._listen(loop))

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        import asyncpg

        conn = None
        try:
            old, self._conn = self._conn, None
            if old is not None:
                with contextlib.suppress(Exception):
                    old.terminate()
            conn = await asyncpg.connect(self._dsn, server_settings={
                "application_name": listener_name()})
            conn.add_termination_listener(self._lost)
            heard = loop.create_future()
            probe = f"probe:{secrets.token_hex(8)}"

            def hear(c: Any, pid: int, channel: str, payload: str) -> None:
                if payload == probe and not heard.done():
                    heard.set_result(None)
                self._notified(c, pid, channel, payload)

            await conn.add_listener(CHANNEL, hear)
            # Only a LISTEN that hears another session's NOTIFY is trusted (through PgBouncer
            # in transaction mode it would not: the cache then stays off).
            other = await asyncpg.connect(self._dsn)
            try:
                await other.execute("SELECT pg_notify($1, $2)", CHANNEL, probe)
            finally:
                await other.close()
            await asyncio.wait_for(heard, PROBE_TIMEOUT_S)
            if self.closed:
                await conn.close()
                return
            self._drop_all()  # whatever was read before LISTEN was in force is not kept
            self._loop, self._conn = loop, conn
        except BaseException as exc:  # refused, no probe heard, or cancelled by close()
            self._retry_at = time.monotonic() + self._retry_s
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._connecting = None

    def _lost(self, conn: Any) -> None:
        if conn is self._conn:
            self._conn = None
            self._drop_all()
            self._retry_at = time.monotonic() + self._retry_s

    async def close(self) -> None:
        self.closed = True
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        conn, self._conn = self._conn, None
        self._drop_all()
        if conn is not None:
            with contextlib.suppress(Exception):
                if self._loop is asyncio.get_running_loop():
                    await asyncio.wait_for(conn.close(), 5)
                else:
                    conn.terminate()
