"""The request pipeline every call goes through, as one ASGI middleware:

request id -> body limit -> (for /v1) signature check -> rate limit -> NUL check ->
idempotency claim -> the route -> idempotency result stored -> log line, metrics and the
redacted request log.

Doing this below the framework keeps it in one readable place and lets the idempotency layer
capture and replay the exact response bytes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openpse.api.auth import AuthContext, Authenticator, client_ip, replayed_nonce
from openpse.api.errors import JSON_CONTENT_TYPE, error_body, json_bytes
from openpse.api.idempotency import (
    Claimed,
    DeferredClaim,
    IdempotencyStore,
    Replay,
    kept_headers,
    request_hash,
    request_in_progress,
    validate_key,
)
from openpse.api.metrics import AUTH_FAILURES, REQUEST_LATENCY, RESPONSES
from openpse.api.ratelimit import RateLimiter
from openpse.domain import errors as e
from openpse.domain.ids import new_id
from openpse.domain.redaction import redact_json, redact_text
from openpse.logs import get_logger
from openpse.storage.db import Tx, first_write
from openpse.storage.request_log import RequestLogWriter

__all__ = ["Pipeline", "PipelineConfig"]

LOGGED_BODY_CAP_BYTES = 16 * 1024
API_PREFIX = "/v1/"
UNMATCHED_ROUTE = "*"  # metric label of paths no route matched: labels stay a bounded set
NUL = "\x00"
# POST routes whose first step is a write transaction, with nothing sent out of the process
# before it: their idempotency claim is written inside that transaction (DeferredClaim).
DEFERRED_CLAIM_PATHS = frozenset({"/v1/payments", "/v1/refunds", "/v1/checkout/sessions"})
DEFERRED_CLAIM_ACTIONS = re.compile(r"/v1/payments/[^/]+/(?:confirm|capture|cancel)")


def defers_claim(path: str) -> bool:
    """Whether a POST to ``path`` has its claim written in the route's first transaction."""
    return path in DEFERRED_CLAIM_PATHS or DEFERRED_CLAIM_ACTIONS.fullmatch(path) is not None


log = get_logger("openpse.api")


@dataclass
class PipelineConfig:
    authenticator: Authenticator
    rate_limiter: RateLimiter
    idempotency: IdempotencyStore
    request_log: RequestLogWriter
    max_body_bytes: int
    default_rate_per_s: int
    trusted_proxies: list[Any]


class _BodyTooLarge(Exception):
    pass


class _Capture:
    """Wraps ``send``: adds headers, remembers status and body for logs and idempotency."""

    def __init__(self, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self.extra = extra_headers
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.started = False
        # While an idempotency key is claimed, the response is held back until it is stored,
        # so a client can never see an answer that a retry would not replay.
        self.hold = False
        self._held: list[Message] = []

    def reset(self) -> None:
        """Forget a held response that will not be sent (another one replaces it)."""
        self.started = False
        self.status = 0
        self.headers = {}
        self.chunks = []
        self._held = []

    async def flush(self) -> None:
        held, self._held = self._held, []
        for message in held:
            await self._send(message)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            raw = list(message.get("headers", [])) + self.extra
            self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
            message = {**message, "headers": raw}
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
        if self.hold:
            self._held.append(message)
            return
        await self._send(message)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class Pipeline:
    def __init__(self, app: ASGIApp, config: PipelineConfig) -> None:
        self.app = app
        self.cfg = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req_")
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        peer = client[0] if client else None
        ip = client_ip(peer, headers.get("x-forwarded-for"), self.cfg.trusted_proxies)
        state["client_ip"] = ip
        extra = [(b"x-request-id", request_id.encode())]
        cap = _Capture(send, extra)
        auth: AuthContext | None = None
        claim: Claimed | DeferredClaim | None = None
        body = b""
        error_code: str | None = None
        try:
            body = await self._read_body(scope, receive, headers)
            if scope["path"].startswith(API_PREFIX):
                # A POST with an Idempotency-Key writes its nonce in the claim's transaction.
                defer = scope["method"] == "POST" and "idempotency-key" in headers
                auth = await self._authenticate(scope, headers, body, ip, defer_nonce=defer)
                state["auth"] = auth
                try:
                    extra.extend(await self._rate_limit(auth))
                    _reject_nul(scope, body)
                    if defer:
                        validate_key(headers["idempotency-key"])
                except BaseException:
                    if auth.pending_nonce is not None:  # refused before the claim: write it
                        await self.cfg.authenticator.remember(auth.pending_nonce)
                    raise
                # The claim writes a pending nonce (or refuses it as replayed).
                outcome = await self._claim(scope, headers, body, auth,
                                            deferred=defers_claim(scope["path"]))
                if isinstance(outcome, Replay):
                    await self._send_replay(cap, outcome)
                    return
                claim = outcome
                if claim is not None:
                    self._hold_claim(state, claim)
                cap.hold = claim is not None
            app_body = _app_body(scope, body)
            if app_body is not body:
                scope = {**scope, "headers": [
                    *(h for h in scope["headers"] if h[0].lower() != b"content-type"),
                    (b"content-type", b"application/json")]}
            if isinstance(claim, DeferredClaim):
                if not await self._run_deferred(scope, app_body, receive, cap, claim):
                    return  # answered with a replay
                claim = state["idempotency"]
            else:
                await self.app(scope, _replay_body(app_body, receive), cap)
            if claim is not None:
                await self._settle_claim(claim, cap, request_id)
                claim = None
        except e.DomainError as err:
            error_code = err.code
            if isinstance(err, e.AuthenticationFailed | e.PermissionDenied) and (
                    auth is None or err.code == "replayed_nonce"):
                AUTH_FAILURES.labels(err.code).inc()
            await self._send_error(cap, err, request_id)
            if claim is not None:
                await self._settle_claim(state.get("idempotency", claim), cap, request_id)
                claim = None
        except _BodyTooLarge:
            error_code = "body_too_large"
            await self._send_error(cap, e.InvalidRequest(
                f"the request body is larger than {self.cfg.max_body_bytes} bytes",
                code="body_too_large"), request_id)
        except Exception:
            log.exception("unhandled error", path=scope["path"])
            error_code = "internal_error"
            if not cap.started:
                await self._send_error(cap, e.DomainError(
                    "an internal error occurred; it is safe to retry with the same "
                    "Idempotency-Key", code="internal_error"), request_id)
        finally:
            if claim is not None:
                await self._abandon_claim(state.get("idempotency", claim))
            await cap.flush()
            self._record(scope, cap, started, request_id, auth, ip, headers, body, error_code)
            structlog.contextvars.unbind_contextvars("request_id")

    async def _read_body(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _BodyTooLarge
        parts: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            parts.append(chunk)
            if not msg.get("more_body", False):
                break
        return b"".join(parts)

    async def _authenticate(
        self, scope: Scope, headers: dict[str, str], body: bytes, ip: str | None,
        defer_nonce: bool,
    ) -> AuthContext:
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
        path = path.split("?", 1)[0]
        return await self.cfg.authenticator.authenticate(
            method=scope["method"], raw_path=path,
            raw_query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers, body=body, ip=ip, defer_nonce=defer_nonce,
        )

    async def _rate_limit(self, auth: AuthContext) -> list[tuple[bytes, bytes]]:
        rate = auth.rate_limit_per_s
        if rate is None:
            rate = self.cfg.default_rate_per_s
        if rate == 0:
            return []
        decision = await self.cfg.rate_limiter.hit(auth.access_key_id, rate)
        hdrs = decision.headers()
        if not decision.allowed:
            raise e.RateLimited(
                f"too many requests for access key {auth.access_key_id} (limit {rate}/s, burst "
                f"{2 * rate}); retry after {decision.retry_after_s} s",
                retry_after_s=decision.retry_after_s, code="rate_limited",
                extra={"rate_limit_headers": hdrs},
            )
        return [(k.lower().encode(), v.encode()) for k, v in hdrs.items()]

    async def _claim(
        self, scope: Scope, headers: dict[str, str], body: bytes, auth: AuthContext, *,
        deferred: bool = False,
    ) -> Claimed | DeferredClaim | Replay | None:
        key = headers.get("idempotency-key")
        if scope["method"] != "POST" or key is None:
            return None
        key = validate_key(key)
        query = scope.get("query_string", b"").decode("latin-1")
        args: dict[str, Any] = {
            "merchant_id": auth.merchant_id, "livemode": auth.livemode, "key": key,
            "method": scope["method"], "path": scope["path"],
            "req_hash": request_hash(scope["method"], scope["path"], query, body),
            "now": int(time.time()), "nonce": auth.pending_nonce}
        if deferred:
            return DeferredClaim(**args)
        return await self.cfg.idempotency.begin(**args)

    async def _run_deferred(self, scope: Scope, app_body: bytes, receive: Receive,
                            cap: _Capture, claim: DeferredClaim) -> bool:
        """Run the route with its claim deferred into its first write transaction. When the
        key turned out to be taken, that transaction rolled back whole: answer through the
        usual claim instead (a replay, a 409, or resuming a crashed attempt, running the route
        again). False when a replay was sent; ``scope["state"]["idempotency"]`` holds the
        claim to settle."""
        try:
            with first_write(claim):
                await self.app(scope, _replay_body(app_body, receive), cap)
        except e.DomainError:
            if claim.state not in ("lost", "replayed"):
                raise
        finally:
            claim.open = False
        if claim.state == "replayed":
            cap.reset()
            raise replayed_nonce()
        if claim.state != "lost":
            return True
        cap.reset()
        nonce, claim.nonce = claim.nonce, None  # the usual claim writes it
        outcome = await self.cfg.idempotency.begin_instead(claim, nonce=nonce)
        if isinstance(outcome, Replay):
            await self._send_replay(cap, outcome)
            return False
        self._hold_claim(scope["state"], outcome)
        await self.app(scope, _replay_body(app_body, receive), cap)
        return True

    async def _settle_claim(self, claim: Claimed | DeferredClaim, cap: _Capture,
                            request_id: str) -> None:
        transient = cap.status >= 500 or cap.status == 429 or cap.status == 0 or (
            cap.status == 409 and b"idempotency_request_in_progress" in cap.body
        )
        if isinstance(claim, DeferredClaim) and claim.state != "committed":
            await self._settle_unwritten(claim, cap, request_id, transient)
            return
        assert claim.record_id is not None
        if transient:
            await self.cfg.idempotency.release(claim.record_id)
        elif claim.stored != (cap.status, kept_headers(cap.headers), cap.body):
            await self.cfg.idempotency.complete(
                claim.record_id, status=cap.status, headers=cap.headers, body=cap.body
            )

    async def _settle_unwritten(self, claim: DeferredClaim, cap: _Capture, request_id: str,
                                transient: bool) -> None:
        """A deferred claim none of whose transactions committed: the request changed
        nothing. A final answer is stored with its key (and the nonce) in one transaction; a
        transient one stores nothing but the nonce, so a retry runs the work."""
        if claim.state in ("lost", "replayed"):
            return  # answered through the usual claim, or refused as replayed
        if transient:
            await self._write_nonce(claim)
            return
        outcome = await self.cfg.idempotency.insert_completed(
            claim, status=cap.status, headers=cap.headers, body=cap.body)
        if outcome == "stored":
            return
        cap.reset()  # nothing was sent yet: the answer becomes the refusal or the replay
        if outcome == "replayed":
            AUTH_FAILURES.labels("replayed_nonce").inc()
            await self._send_error(cap, replayed_nonce(), request_id)
            return
        try:  # the key exists: answer as its holder says (a replay, a 409 or a 422)
            found = await self.cfg.idempotency.begin_instead(claim, nonce=None)
        except e.DomainError as err:
            await self._send_error(cap, err, request_id)
            return
        if isinstance(found, Replay):
            await self._send_replay(cap, found)
            return
        # a crashed holder's stale lock, just taken over: hand it back for a retry to resume
        await self.cfg.idempotency.release(found.record_id)
        await self._send_error(cap, request_in_progress(), request_id)

    async def _write_nonce(self, claim: DeferredClaim) -> None:
        nonce, claim.nonce = claim.nonce, None
        if nonce is not None:
            try:
                await self.cfg.authenticator.remember(nonce)
            except e.DomainError:
                pass  # already used: this request is over either way

    async def _abandon_claim(self, claim: Claimed | DeferredClaim) -> None:
        """The request failed without settling its claim: free the key for a retry."""
        try:
            if isinstance(claim, DeferredClaim) and claim.state != "committed":
                if claim.state not in ("lost", "replayed"):
                    await self._write_nonce(claim)
            elif claim.record_id is not None:
                await self.cfg.idempotency.release(claim.record_id)
        except Exception:  # the database is gone: the lock times out instead
            log.exception("could not release an idempotency key")

    def _hold_claim(self, state: dict[str, Any], claim: Claimed | DeferredClaim) -> None:
        """Hand the request's claim to the route (``deps.get_caller``), with what a service
        calls to store its JSON answer in its last transaction (``Caller.respond``)."""
        store = self.cfg.idempotency

        async def respond(tx: Tx, status: int, body: bytes, writes: list[Any] | None = None
                          ) -> None:
            await store.store_in(tx, claim, status=status,
                                 headers={"content-type": JSON_CONTENT_TYPE}, body=body,
                                 writes=writes)

        state["idempotency"] = claim
        state["idempotency_respond"] = respond

    async def _send_replay(self, cap: _Capture, replay: Replay) -> None:
        hdrs = [(k.encode(), v.encode()) for k, v in replay.headers.items()]
        hdrs.append((b"idempotent-replayed", b"true"))
        hdrs.append((b"content-length", str(len(replay.body)).encode()))
        await cap({"type": "http.response.start", "status": replay.status, "headers": hdrs})
        await cap({"type": "http.response.body", "body": replay.body})

    async def _send_error(self, cap: _Capture, err: e.DomainError, request_id: str) -> None:
        if cap.started:
            return
        status, payload = error_body(err, request_id)
        extra = payload["error"].pop("rate_limit_headers", None) or {}
        body = json_bytes(payload)
        hdrs = [(b"content-type", JSON_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode())]
        if isinstance(err, e.RateLimited):
            hdrs.append((b"retry-after", str(err.retry_after_s).encode()))
        hdrs.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
        await cap({"type": "http.response.start", "status": status, "headers": hdrs})
        await cap({"type": "http.response.body", "body": body})

    def _record(
        self, scope: Scope, cap: _Capture, started: float, request_id: str,
        auth: AuthContext | None, ip: str | None, headers: dict[str, str], body: bytes,
        error_code: str | None,
    ) -> None:
        duration_s = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or ("/v1/*" if scope["path"].startswith(
            API_PREFIX) else UNMATCHED_ROUTE)
        REQUEST_LATENCY.labels(scope["method"], template).observe(duration_s)
        RESPONSES.labels(str(cap.status)).inc()
        if error_code is None and cap.status >= 400 and cap.body[:1] == b"{":
            try:
                error_code = orjson.loads(cap.body)["error"]["code"]
            except Exception:
                error_code = None
        log.info(
            "request", method=scope["method"], path=scope["path"], status=cap.status,
            duration_ms=round(duration_s * 1000, 2),
            merchant_id=auth.merchant_id if auth else None, error_code=error_code,
        )
        if not scope["path"].startswith(API_PREFIX):
            return
        self.cfg.request_log.submit({
            "id": request_id,
            "merchant_id": auth.merchant_id if auth else None,
            "livemode": auth.livemode if auth else None,
            "access_key_id": auth.access_key_id if auth else headers.get("x-pse-access-key",
                                                                         "")[:64] or None,
            "method": scope["method"],
            "path": _printable(scope["path"])[:2048],
            "query": redact_text(scope.get("query_string", b"").decode("latin-1"))[:2048],
            "status": cap.status,
            "error_code": error_code,
            "duration_ms": int(duration_s * 1000),
            "client_ip": ip,
            "idempotency_key": headers.get("idempotency-key", "")[:255] or None,
            "request_body": _redacted_json(body),
            "response_body": _redacted_json(cap.body),
            "created": int(time.time()),
        })


def _redacted_json(raw: bytes) -> str | None:
    if not raw:
        return None
    try:
        text = redact_json(raw)
    except ValueError:
        # Not JSON: a CVC in free text cannot be told from any other number, so none is kept.
        return f"[{len(raw)} bytes, not JSON: not stored]"
    return text[:LOGGED_BODY_CAP_BYTES]


def _printable(text: str) -> str:
    """Text a log row can hold: PostgreSQL refuses NUL in text, and one such row would lose
    its whole batch."""
    return text.replace(NUL, "\ufffd")


def _reject_nul(scope: Scope, body: bytes) -> None:
    """No text we store may hold NUL (PostgreSQL refuses it): a 400 naming where it is, before
    anything runs, instead of a 500 from the database."""
    param: str | None = None
    if NUL in scope["path"]:
        param = "path"
    elif b"%00" in scope.get("query_string", b""):
        query = scope["query_string"].decode("latin-1")
        param = next((k for k, v in parse_qsl(query, keep_blank_values=True)
                      if NUL in k or NUL in v), None)
    elif b"\\u0000" in body:  # the JSON escape; parse only when it is there
        try:
            param = _nul_param(json.loads(body), "")
        except (ValueError, RecursionError):
            return  # not JSON: the route answers invalid_json
    if param is None:
        return
    raise e.InvalidRequest(
        f"{param or 'the request body'} must not contain NUL (\\u0000) characters",
        param=param or None,
    )


def _nul_param(obj: Any, param: str) -> str | None:
    """The param (``a[b][0]``) of the first string or key holding NUL, else None."""
    if isinstance(obj, str):
        return param if NUL in obj else None
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        name = f"{param}[{key}]" if param else str(key)
        if NUL in str(key):
            return name
        found = _nul_param(value, name)
        if found is not None:
            return found
    return None


def _app_body(scope: Scope, body: bytes) -> bytes:
    """An action with nothing to set may be sent with no body at all (``POST .../capture``):
    the route sees ``{}``. The signature was checked over the bytes actually sent. A body of
    only whitespace is not "no body": it is not JSON either, and is refused as such."""
    if (not body and scope["method"] in ("POST", "PATCH", "PUT")
            and scope["path"].startswith(API_PREFIX)):
        return b"{}"
    return body


def _replay_body(body: bytes, original: Receive) -> Receive:
    """Hand the already-read body to the app once; afterwards wait for the real disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive
