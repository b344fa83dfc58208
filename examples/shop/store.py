"""The shop's orders and stock in SQLite, and the one place webhook events change them.

Exactly-once fulfilment does not need anything clever, only three rules applied inside one
database transaction per event:

1. **Idempotent by event id**: ``processed_events`` has the event id as primary key; a
   redelivery (same ``webhook-id``) finds it and changes nothing.
2. **Order-safe by object version**: ``object_versions`` remembers the highest
   ``data.object.version`` acted on per object; an older one arriving late is stale.
3. **Guarded by order state**: an order moves ``pending -> paid`` or ``pending -> canceled``
   with ``UPDATE ... WHERE status = 'pending'``; two different events about the same payment
   (``payment.succeeded`` and ``checkout.session.completed``) fulfil it once.

If anything raises, the transaction rolls back (the event is not marked processed), the
handler answers 500 and OpenPSE delivers the event again later.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openpse_sdk import webhooks

__all__ = ["OutOfStock", "Store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY, name TEXT NOT NULL, price INTEGER NOT NULL, currency TEXT NOT NULL,
    stock INTEGER NOT NULL CHECK (stock >= 0));
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, sku TEXT NOT NULL REFERENCES products(sku),
    quantity INTEGER NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',   -- pending | paid | canceled
    checkout_session TEXT, payment TEXT, fulfilments INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fulfilments (
    order_id TEXT NOT NULL, event_id TEXT NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS processed_events (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, outcome TEXT NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS object_versions (
    object_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_receipts (
    event_id TEXT NOT NULL, type TEXT NOT NULL, at REAL NOT NULL);
"""

CATALOGUE = [("tea", "Sencha, 100 g", 1500, "JPY", 5), ("cup", "Yunomi cup", 2800, "JPY", 3)]


class OutOfStock(Exception):
    pass


@dataclass
class Store:
    path: Path

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue instead of failing)."""
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def init(self) -> None:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            conn.execute("PRAGMA journal_mode = WAL")  # readers do not wait for the writer
            conn.executescript(SCHEMA)
        finally:
            conn.close()
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO products VALUES (?, ?, ?, ?, ?)", CATALOGUE)

    # ---- reads -------------------------------------------------------------------------------

    def products(self) -> list[dict[str, Any]]:
        with self._tx() as db:
            return [dict(r) for r in db.execute("SELECT * FROM products ORDER BY sku")]

    def order(self, order_id: str) -> dict[str, Any] | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
            return dict(row) if row is not None else None

    def receipts(self, event_id: str) -> int:
        with self._tx() as db:
            return int(db.execute("SELECT COUNT(*) FROM webhook_receipts WHERE event_id = ?",
                                  (event_id,)).fetchone()[0])

    # ---- orders ------------------------------------------------------------------------------

    def create_order(self, sku: str, quantity: int) -> dict[str, Any]:
        """Reserve stock and open an order, or raise OutOfStock."""
        if quantity < 1:
            raise ValueError("quantity must be at least 1")
        order_id = "ord_" + secrets.token_hex(8)
        with self._tx() as db:
            product = db.execute("SELECT * FROM products WHERE sku = ?", (sku,)).fetchone()
            if product is None:
                raise ValueError(f"no product {sku!r}")
            taken = db.execute("UPDATE products SET stock = stock - ? WHERE sku = ? AND stock >= ?",
                               (quantity, sku, quantity)).rowcount
            if not taken:
                raise OutOfStock(sku)
            db.execute("INSERT INTO orders (id, sku, quantity, amount, currency, created) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (order_id, sku, quantity,
                                                     product["price"] * quantity,
                                                     product["currency"], int(time.time())))
        order = self.order(order_id)
        assert order is not None
        return order

    def attach_session(self, order_id: str, session_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE orders SET checkout_session = ? WHERE id = ?",
                       (session_id, order_id))

    def cancel_unpaid(self, order_id: str) -> None:
        """Give the stock back when no checkout could be opened."""
        with self._tx() as db:
            _release(db, order_id)

    # ---- webhook events ----------------------------------------------------------------------

    def handle_event(self, event: dict[str, Any]) -> str:
        """Apply one verified event exactly once; returns what happened (for logs and tests)."""
        with self._tx() as db:
            db.execute("INSERT INTO webhook_receipts VALUES (?, ?, ?)",
                       (event["id"], event["type"], time.time()))
            if db.execute("SELECT 1 FROM processed_events WHERE id = ?",
                          (event["id"],)).fetchone():
                return "duplicate"
            outcome = _apply(db, event)
            db.execute("INSERT INTO processed_events VALUES (?, ?, ?, ?)",
                       (event["id"], event["type"], outcome, int(time.time())))
            return outcome


def _apply(db: sqlite3.Connection, event: dict[str, Any]) -> str:
    obj = event["data"]["object"]
    row = db.execute("SELECT version FROM object_versions WHERE object_id = ?",
                     (obj["id"],)).fetchone()
    if webhooks.is_stale(event, row["version"] if row else None):
        return f"stale {obj['id']} v{obj['version']}"
    db.execute("INSERT INTO object_versions VALUES (?, ?) ON CONFLICT (object_id) "
               "DO UPDATE SET version = excluded.version", (obj["id"], obj["version"]))
    kind = event["type"]
    order_id = obj.get("merchant_order_id")
    if kind == "checkout.session.completed":
        return _mark_paid(db, event, order_id, obj.get("payment"))
    if kind == "payment.succeeded":
        return _mark_paid(db, event, order_id, obj["id"])
    if kind == "checkout.session.expired" or (
            kind == "payment.canceled" and obj.get("cancellation_reason") == "expired"):
        return _release(db, order_id)
    return f"ignored {kind}"  # acknowledged all the same: new types appear over time


def _mark_paid(db: sqlite3.Connection, event: dict[str, Any], order_id: str | None,
               payment_id: str | None) -> str:
    obj = event["data"]["object"]
    order = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if order is None:
        return f"unknown order {order_id}"
    if (obj.get("amount"), obj.get("currency")) != (order["amount"], order["currency"]):
        return f"amount mismatch for {order_id}: not fulfilled"
    paid = db.execute("UPDATE orders SET status = 'paid', payment = ?, "
                      "fulfilments = fulfilments + 1 WHERE id = ? AND status = 'pending'",
                      (payment_id, order_id)).rowcount
    if not paid:
        return f"{order_id} already {order['status']}"
    db.execute("INSERT INTO fulfilments VALUES (?, ?, ?)",
               (order_id, event["id"], int(time.time())))  # "ship it", exactly once
    return f"fulfilled {order_id}"


def _release(db: sqlite3.Connection, order_id: str | None) -> str:
    order = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if order is None:
        return f"unknown order {order_id}"
    closed = db.execute("UPDATE orders SET status = 'canceled' WHERE id = ? "
                        "AND status = 'pending'", (order_id,)).rowcount
    if not closed:
        return f"{order_id} already {order['status']}"
    db.execute("UPDATE products SET stock = stock + ? WHERE sku = ?",
               (order["quantity"], order["sku"]))
    return f"released stock of {order_id}"
