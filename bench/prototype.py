"""A bare prototype of OpenPSE's hot path: the same signed ``POST /v1/payments`` and the same
durable writes per payment, with nothing on top. It is the yardstick the suite holds OpenPSE's
create+confirm rate against (``../shared/PERFORMANCE.md`` measured its like at ≈1,000-1,650/s).

    python -m bench.prototype serve --backend postgresql --database-url postgresql://.../scratch \
        --port 8100 --access-key ak_test_x --secret sk_test_y
    python -m bench.prototype serve --backend sqlite --database-url sqlite:////tmp/proto.db ...
    python -m bench.prototype sqlite-floor --database-url sqlite:////tmp/floor.db --duration 5

Per request: check the four signed headers (CONTRACT §2: timestamp window, nonce form,
HMAC-SHA256 over the string to sign, constant-time compare), parse the JSON body, check the
card number (digits, Luhn), then in ONE transaction: insert the nonce (its primary key refuses a
replay), insert the idempotency row (with the response), insert the payment, insert the
``payment.succeeded`` event (JSON), insert the 3 ledger postings, update the merchant's balance;
answer 201 with the payment JSON. The access key and its secret are given on the command line.

Variants: PostgreSQL through asyncpg, one statement per round trip, a pool of ``--pool-size``
(10) connections; SQLite in WAL mode with ``synchronous=FULL`` and one writer thread fed by a
queue (one transaction per payment, no group commit). The schema is its own, created at start in
the scratch database or file it is given. ``pgbench_script()`` is the same transaction as plain
SQL, for pgbench; ``sqlite-floor`` runs it in a tight loop on SQLite, with no HTTP at all.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import queue
import re
import resource
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from bench.loadgen import percentile, string_to_sign

__all__ = ["MERCHANT_ID", "create_schema_pg", "pgbench_script", "schema"]

MERCHANT_ID: Final = "mch_bench"
TIMESTAMP_WINDOW_S: Final = 300
NONCE_RE: Final = re.compile(rb"\A[A-Za-z0-9_-]{16,64}\Z")
FEE_BPS: Final = 360  # 3.6%
MAX_BODY_BYTES: Final = 1 << 20

# --- schema --------------------------------------------------------------------------------------


def schema(dialect: str) -> list[str]:
    json_type = "JSONB" if dialect == "postgresql" else "TEXT"
    return [
        "CREATE TABLE IF NOT EXISTS nonces (access_key TEXT NOT NULL, nonce TEXT NOT NULL, "
        "created_s BIGINT NOT NULL, PRIMARY KEY (access_key, nonce))",
        "CREATE TABLE IF NOT EXISTS idempotency_keys (merchant_id TEXT NOT NULL, "
        "key TEXT NOT NULL, request_hash TEXT NOT NULL, status_code INTEGER NOT NULL, "
        "response TEXT NOT NULL, created_s BIGINT NOT NULL, PRIMARY KEY (merchant_id, key))",
        "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, "
        "amount BIGINT NOT NULL, currency TEXT NOT NULL, merchant_order_id TEXT NOT NULL, "
        "status TEXT NOT NULL, amount_received BIGINT NOT NULL, card_brand TEXT NOT NULL, "
        "card_last4 TEXT NOT NULL, created_s BIGINT NOT NULL, version INTEGER NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, "
        f"type TEXT NOT NULL, object_id TEXT NOT NULL, data {json_type} NOT NULL, "
        f"created_s BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS postings (journal_id TEXT NOT NULL, seq INTEGER NOT NULL, "
        "account TEXT NOT NULL, amount BIGINT NOT NULL, currency TEXT NOT NULL, "
        "PRIMARY KEY (journal_id, seq))",
        "CREATE TABLE IF NOT EXISTS balances (merchant_id TEXT NOT NULL, "
        "currency TEXT NOT NULL, amount BIGINT NOT NULL, PRIMARY KEY (merchant_id, currency))",
    ]


def _seed_sql(dialect: str) -> str:
    conflict = "ON CONFLICT DO NOTHING"
    return (f"INSERT INTO balances (merchant_id, currency, amount) VALUES "
            f"('{MERCHANT_ID}', 'JPY', 0) {conflict}")


async def create_schema_pg(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for ddl in schema("postgresql"):
            await conn.execute(ddl)
        await conn.execute(_seed_sql("postgresql"))
    finally:
        await conn.close()


SQL_PG: Final = {
    "nonce": "INSERT INTO nonces (access_key, nonce, created_s) VALUES ($1, $2, $3)",
    "idem": "INSERT INTO idempotency_keys (merchant_id, key, request_hash, status_code, "
            "response, created_s) VALUES ($1, $2, $3, $4, $5, $6)",
    "payment": "INSERT INTO payments (id, merchant_id, amount, currency, merchant_order_id, "
               "status, amount_received, card_brand, card_last4, created_s, version) "
               "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    "event": "INSERT INTO events (id, merchant_id, type, object_id, data, created_s) "
             "VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
    "posting": "INSERT INTO postings (journal_id, seq, account, amount, currency) "
               "VALUES ($1, $2, $3, $4, $5)",
    "balance": "UPDATE balances SET amount = amount + $1 WHERE merchant_id = $2 "
               "AND currency = $3",
}
SQL_SQLITE: Final = {k: re.sub(r"\$\d+", "?", v).replace("::jsonb", "") for k, v in SQL_PG.items()}


def pgbench_script() -> str:
    """The prototype's transaction as a pgbench script: the same 8 writes (random ids), one
    statement per round trip, between BEGIN and END. Variables are cast: under ``-M prepared``
    they are parameters of unknown type."""
    amount, cid, j = ":amount::bigint", ":client_id::text", ":j::text"
    journal = f"'jr_' || {cid} || '_' || {j}"
    posting = ("INSERT INTO postings (journal_id, seq, account, amount, currency) VALUES "
               "({journal}, {seq}, '{account}', {value}, 'JPY') ON CONFLICT DO NOTHING;")
    return "\n".join([
        r"\set amount random(1000, 1499)",
        r"\set j random(1, 1000000000000)",
        "BEGIN;",
        "INSERT INTO nonces (access_key, nonce, created_s) VALUES "
        "('ak_bench', md5(random()::text || clock_timestamp()::text), 1763773200);",
        "INSERT INTO idempotency_keys (merchant_id, key, request_hash, status_code, response, "
        f"created_s) VALUES ('{MERCHANT_ID}', gen_random_uuid()::text, "
        "md5(random()::text), 201, '{\"id\":\"pay_x\",\"object\":\"payment\",\"amount\":1000}', "
        "1763773200);",
        "INSERT INTO payments (id, merchant_id, amount, currency, merchant_order_id, status, "
        f"amount_received, card_brand, card_last4, created_s, version) VALUES "
        f"('pay_' || gen_random_uuid()::text, '{MERCHANT_ID}', {amount}, 'JPY', 'ord', "
        f"'succeeded', {amount}, 'visa', '4242', 1763773200, 1);",
        "INSERT INTO events (id, merchant_id, type, object_id, data, created_s) VALUES "
        f"('evt_' || gen_random_uuid()::text, '{MERCHANT_ID}', 'payment.succeeded', 'pay_x', "
        "'{\"object\":{\"id\":\"pay_x\",\"object\":\"payment\",\"amount\":1000,"
        "\"status\":\"succeeded\"},\"previous_attributes\":{\"status\":\"processing\"}}', "
        "1763773200);",
        posting.format(journal=journal, seq=1, account="acquirer_receivable", value=amount),
        posting.format(journal=journal, seq=2, account="merchant_pending",
                       value=f"36 - {amount}"),
        posting.format(journal=journal, seq=3, account="platform_fees", value="-36"),
        f"UPDATE balances SET amount = amount + {amount} - 36 WHERE merchant_id = "
        f"'{MERCHANT_ID}' AND currency = 'JPY';",
        "END;",
        "",
    ])


# --- the writes ----------------------------------------------------------------------------------


def _rows(p: dict[str, Any], key: str, nonce: str, idem: str, req_hash: str,
          response: bytes, now: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements of one payment, in order, with their parameters."""
    fee = p["amount"] * FEE_BPS // 10_000
    journal = "jr_" + p["id"][4:]
    event = orjson.dumps({"object": p, "previous_attributes": {"status": "processing"}})
    return [
        ("nonce", (key, nonce, now)),
        ("idem", (MERCHANT_ID, idem, req_hash, 201, response.decode(), now)),
        ("payment", (p["id"], MERCHANT_ID, p["amount"], p["currency"], p["merchant_order_id"],
                     p["status"], p["amount_received"], p["card"]["brand"],
                     p["card"]["last4"], now, 1)),
        ("event", ("evt_" + secrets.token_hex(12), MERCHANT_ID, "payment.succeeded", p["id"],
                   event.decode(), now)),
        ("posting", (journal, 1, "acquirer_receivable", p["amount"], p["currency"])),
        ("posting", (journal, 2, "merchant_pending", -(p["amount"] - fee), p["currency"])),
        ("posting", (journal, 3, "platform_fees", -fee, p["currency"])),
        ("balance", (p["amount"] - fee, MERCHANT_ID, p["currency"])),
    ]


class Replayed(Exception):
    """The nonce (or the idempotency key) was already there."""


class PGStore:
    def __init__(self, url: str, pool_size: int) -> None:
        self.url, self.pool_size = url, pool_size
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        await create_schema_pg(self.url)
        self.pool = await asyncpg.create_pool(self.url, min_size=self.pool_size,
                                              max_size=self.pool_size)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def write(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        import asyncpg

        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    for name, args in rows:
                        await conn.execute(SQL_PG[name], *args)
            except asyncpg.UniqueViolationError as exc:
                raise Replayed(str(exc)) from exc


def _sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    for ddl in schema("sqlite"):
        conn.execute(ddl)
    conn.execute(_seed_sql("sqlite"))
    return conn


def _sqlite_tx(conn: sqlite3.Connection, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, args in rows:
            conn.execute(SQL_SQLITE[name], args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SQLiteStore:
    """One writer thread owns the connection; requests hand it their rows through a queue."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    async def open(self) -> None:
        conn = _sqlite_connect(self.path)
        self.thread = threading.Thread(target=self._writer, args=(conn,), daemon=True)
        self.thread.start()

    async def close(self) -> None:
        self.jobs.put(None)

    def _writer(self, conn: sqlite3.Connection) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                conn.close()
                return
            rows, loop, fut = job
            try:
                _sqlite_tx(conn, rows)
            except sqlite3.IntegrityError as exc:
                loop.call_soon_threadsafe(_settle, fut, Replayed(str(exc)))
            except Exception as exc:
                loop.call_soon_threadsafe(_settle, fut, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, None)

    async def write(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.jobs.put((rows, loop, fut))
        await fut


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


# --- the HTTP side -------------------------------------------------------------------------------


def luhn_ok(number: str) -> bool:
    if not (12 <= len(number) <= 19 and number.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class HttpError(Exception):
    def __init__(self, status: int, type_: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.code = status, type_, code


def _check_signature(headers: dict[bytes, bytes], method: str, path: str, query: str,
                     body: bytes, key: str, secret: bytes) -> tuple[str, str]:
    got_key = headers.get(b"x-pse-access-key")
    ts = headers.get(b"x-pse-timestamp")
    nonce = headers.get(b"x-pse-nonce")
    sig = headers.get(b"x-pse-signature")
    if not (got_key and ts and nonce and sig):
        raise HttpError(401, "authentication_error", "missing_signature", "signature missing")
    if got_key.decode() != key:
        raise HttpError(401, "authentication_error", "unknown_access_key", "unknown key")
    if not ts.isdigit() or abs(int(time.time()) - int(ts)) > TIMESTAMP_WINDOW_S:
        raise HttpError(401, "authentication_error", "timestamp_out_of_window", "bad timestamp")
    if not NONCE_RE.match(nonce):
        raise HttpError(401, "authentication_error", "invalid_signature", "bad nonce")
    sts = string_to_sign(method, path, query, ts.decode(), nonce.decode(), body)
    want = hmac.new(secret, sts.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want.encode(), sig):
        raise HttpError(401, "authentication_error", "invalid_signature", "bad signature")
    return got_key.decode(), nonce.decode()


def _payment_of(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HttpError(400, "invalid_request_error", "invalid_body", "a JSON object")
    amount = data.get("amount")
    if type(amount) is not int or amount <= 0:
        raise HttpError(400, "invalid_request_error", "invalid_amount", "amount")
    currency = data.get("currency")
    if not isinstance(currency, str) or len(currency) != 3:
        raise HttpError(400, "invalid_request_error", "invalid_currency", "currency")
    order = data.get("merchant_order_id")
    if not isinstance(order, str) or not order:
        raise HttpError(400, "invalid_request_error", "parameter_missing", "merchant_order_id")
    method = data.get("payment_method")
    card = method.get("card") if isinstance(method, dict) else None
    if not isinstance(method, dict) or not isinstance(card, dict) or method["type"] != "card":
        raise HttpError(400, "invalid_request_error", "parameter_missing", "payment_method")
    number = card.get("number")
    if not isinstance(number, str) or not luhn_ok(number):
        raise HttpError(400, "invalid_request_error", "invalid_number", "card number")
    now = int(time.time())
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return {"id": "pay_" + secrets.token_hex(12), "object": "payment", "livemode": False,
            "amount": amount, "currency": currency, "merchant_order_id": order,
            "status": "succeeded", "capture_method": "automatic", "amount_capturable": 0,
            "amount_received": amount, "amount_refunded": 0,
            "card": {"brand": "visa" if number[0] == "4" else "other", "last4": number[-4:],
                     "exp_month": card.get("exp_month"), "exp_year": card.get("exp_year")},
            "created": created, "updated": created, "version": 1}


Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def make_app(store: Any, key: str, secret: str) -> Any:
    secret_b = secret.encode()

    async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await store.open()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await store.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}')
            return
        if path != "/v1/payments" or method != "POST":
            await _respond(send, 404, b'{"error":{"code":"not_found"}}')
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _respond(send, 413, b'{"error":{"code":"body_too_large"}}')
                return
            if not msg.get("more_body"):
                break
        try:
            headers = dict(scope["headers"])
            raw_path = scope.get("raw_path") or path.encode()
            akey, nonce = _check_signature(headers, method, raw_path.decode(),
                                           scope["query_string"].decode(), body, key, secret_b)
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise HttpError(400, "invalid_request_error", "invalid_json", "JSON") from exc
            payment = _payment_of(data)
            response = orjson.dumps(payment)
            idem = headers.get(b"idempotency-key", b"").decode() or "none-" + nonce
            rows = _rows(payment, akey, nonce, idem, hashlib.sha256(body).hexdigest(), response,
                         int(time.time()))
            try:
                await store.write(rows)
            except Replayed as exc:
                raise HttpError(401, "authentication_error", "replayed_nonce", "replay") from exc
        except HttpError as err:
            await _respond(send, err.status, orjson.dumps({"error": {
                "type": err.type, "code": err.code, "message": str(err)}}))
            return
        await _respond(send, 201, response)

    return app


def _sqlite_path(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise SystemExit("a sqlite:///path URL is needed")
    return url[len("sqlite:///"):]


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    store: Any
    if args.backend == "postgresql":
        store = PGStore(args.database_url, args.pool_size)
    else:
        store = SQLiteStore(_sqlite_path(args.database_url))
    app = make_app(store, args.access_key, args.secret)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                lifespan="on", log_level="warning", access_log=False)


def sqlite_floor(args: argparse.Namespace) -> None:
    """The prototype's transaction straight into SQLite (one writer, no HTTP), for a duration."""
    conn = _sqlite_connect(_sqlite_path(args.database_url))
    base = {"amount": 1000, "currency": "JPY", "merchant_order_id": "ord", "status": "succeeded",
            "amount_received": 1000, "card": {"brand": "visa", "last4": "4242"}}
    lat: list[float] = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    deadline = start + args.duration
    i = 0
    while time.perf_counter() < deadline:
        i += 1
        p = dict(base, id=f"pay_{i:012d}", amount=1000 + i % 500)
        t0 = time.perf_counter()
        _sqlite_tx(conn, _rows(p, "ak_bench", f"nonce{i:016d}", f"idem{i}", "h",
                               b'{"id":"pay_x"}', int(time.time())))
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    lat.sort()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    print(json.dumps({"transactions": len(lat), "elapsed_s": elapsed,
                      "tps": len(lat) / elapsed, "p50_ms": percentile(lat, 0.5) * 1000,
                      "p95_ms": percentile(lat, 0.95) * 1000,
                      "p99_ms": percentile(lat, 0.99) * 1000, "max_ms": lat[-1] * 1000,
                      "cpu_s": cpu, "peak_rss_mb": ru1.ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="the prototype HTTP server")
    s.add_argument("--backend", choices=["postgresql", "sqlite"], required=True)
    s.add_argument("--database-url", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--access-key", required=True)
    s.add_argument("--secret", required=True)
    s.add_argument("--pool-size", type=int, default=10)
    f = sub.add_parser("sqlite-floor", help="the transaction alone, in a loop, on SQLite")
    f.add_argument("--database-url", required=True)
    f.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    else:
        sqlite_floor(args)


if __name__ == "__main__":
    main()
