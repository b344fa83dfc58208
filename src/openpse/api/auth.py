"""Signed requests (CONTRACT §2): who is calling, in which mode, from where.

Checks run in this order, each with its own error code: all four headers present
(``missing_signature``), timestamp inside the window (``timestamp_out_of_window``, with the
server's time and the skew), the key exists (``unknown_access_key``) and is usable
(``key_revoked``), the client address is on the key's allowlist (403 ``ip_not_allowed``), the
signature matches in constant time (``invalid_signature``), and the nonce is new
(``replayed_nonce``). The nonce is only recorded after the signature verified, so nobody can
burn another client's nonces.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from openpse.api.nonces import NonceStore, PendingNonce
from openpse.crypto import SecretBox
from openpse.domain import signing
from openpse.domain.errors import AuthenticationFailed, PermissionDenied
from openpse.services.context import MERCHANT_TERMS
from openpse.services.merchants import secret_context
from openpse.storage.db import Database
from openpse.storage.direct import direct, prefixed, unprefixed
from openpse.storage.tables import access_keys, merchants

__all__ = ["AuthContext", "Authenticator", "client_ip"]

HEADER_KEY = "x-pse-access-key"
HEADER_TS = "x-pse-timestamp"
HEADER_NONCE = "x-pse-nonce"
HEADER_SIG = "x-pse-signature"
REQUIRED_HEADERS = (HEADER_KEY, HEADER_TS, HEADER_NONCE, HEADER_SIG)
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SIG_RE = re.compile(r"^[0-9a-f]{64}$")
SECRET_CACHE_MAX = 10_000
MS_TIMESTAMP_DIGITS = 13
MAX_TIMESTAMP_DIGITS = 20  # int() of a longer digit run is slow or refused (4300-digit limit)


@dataclass(frozen=True)
class AuthContext:
    merchant_id: str
    livemode: bool
    access_key_id: str
    rate_limit_per_s: int | None
    # Set when the nonce check was deferred into the idempotency claim's transaction
    # (authenticate(defer_nonce=True)); the pipeline must then write it (PendingNonce.write).
    pending_nonce: PendingNonce | None = None
    # The merchant's fee plan and sandbox clock as the key's read found them (``pricing``,
    # ``sandbox_clock_offset_s``): what an acquirer's answer in this request prices with when
    # it needs no read of its own (``Caller.merchant_terms``).
    merchant_terms: dict[str, Any] | None = None


def replayed_nonce() -> AuthenticationFailed:
    return AuthenticationFailed(
        "this X-PSE-Nonce was already used with this key: send a fresh random nonce with every "
        "request (a retry is a new request, re-signed)",
        code="replayed_nonce",
    )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _server_time(now_s: float) -> str:
    """For a refusal's message only (formatted for every request, it cost each ≈ 2.5 µs)."""
    return f"server time is {int(now_s)} ({_utc(now_s)})"


def parse_timestamp(value: str, now_s: float, window_s: int) -> int:
    """Whole Unix seconds inside ±window of server time; otherwise a message that says why."""
    if not value.isascii() or not value.isdigit() or len(value) > MAX_TIMESTAMP_DIGITS:
        hint = ""
        if re.match(r"^\d{4}-\d{2}-\d{2}", value):
            hint = " It looks like a formatted date; send Unix seconds in UTC instead."
        elif re.match(r"^\d+\.\d+$", value):
            hint = " Send whole seconds, without a fraction."
        raise AuthenticationFailed(
            f"X-PSE-Timestamp must be the Unix time in whole seconds (UTC), "
            f"e.g. {int(now_s)}.{hint} The {_server_time(now_s)}.",
            code="timestamp_out_of_window",
        )
    ts = int(value)
    skew = ts - int(now_s)
    if abs(skew) > window_s:
        hint = ""
        if len(value) >= MS_TIMESTAMP_DIGITS:
            hint = " It looks like milliseconds; send seconds (divide by 1000)."
        raise AuthenticationFailed(
            f"X-PSE-Timestamp {value} is {abs(skew)} s {'ahead of' if skew > 0 else 'behind'} "
            f"the server; the allowed window is ±{window_s} s. The {_server_time(now_s)}; "
            f"check the client's clock (NTP).{hint}",
            code="timestamp_out_of_window",
            extra={"server_time": _utc(now_s), "skew_seconds": skew},
        )
    return ts


def client_ip(peer: str | None, forwarded_for: str | None, trusted: list[Any]) -> str | None:
    """The caller's address. ``X-Forwarded-For`` is believed only when the peer is a trusted
    proxy, and then we walk it from the right, skipping trusted hops, so a client cannot put a
    fake address at the left and have it used."""
    if peer is None:
        return None
    if not forwarded_for or not _in_any(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_any(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _in_any(addr: str, nets: list[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in nets)


class Authenticator:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        nonces: NonceStore,
        *,
        window_s: int,
        sandbox_debug: bool = True,
    ) -> None:
        self._db = db
        self._box = box
        self._nonces = nonces
        self._window_s = window_s
        self._sandbox_debug = sandbox_debug
        self._secrets: dict[tuple[str, str], str] = {}

    async def authenticate(
        self,
        *,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: dict[str, str],
        body: bytes,
        ip: str | None,
        defer_nonce: bool = False,
    ) -> AuthContext:
        """Check the signature. With ``defer_nonce`` (and a database nonce store) the nonce is
        not written here but returned as ``pending_nonce`` for the caller's transaction."""
        missing = [h for h in REQUIRED_HEADERS if not headers.get(h)]
        if missing:
            names = ", ".join("X-PSE-" + h[6:].title() for h in missing)
            raise AuthenticationFailed(
                f"missing header(s) {names}: every /v1 request is signed (see the signing guide)",
                code="missing_signature",
            )
        key_id, ts_text = headers[HEADER_KEY], headers[HEADER_TS]
        nonce, sig = headers[HEADER_NONCE], headers[HEADER_SIG]
        if not _NONCE_RE.match(nonce):
            raise AuthenticationFailed(
                "X-PSE-Nonce must be 16-64 characters of A-Z a-z 0-9 _ -, new for every request",
                code="missing_signature",
            )
        now = time.time()
        ts = parse_timestamp(ts_text, now, self._window_s)
        key = await self._load_key(key_id)
        self._check_key_usable(key, key_id, int(now))
        if key["ip_allowlist"] and not _in_any(ip or "", [
            ipaddress.ip_network(c, strict=False) for c in key["ip_allowlist"]
        ]):
            raise PermissionDenied(
                f"requests from {ip} are not allowed for access key {key_id}; add this address "
                "to the key's IP allowlist or call from an allowed host",
                code="ip_not_allowed",
            )
        secret = self._secret(key)
        sts = signing.string_to_sign(method, raw_path, raw_query, ts_text, nonce, body)
        expected = signing.sign(secret, sts)
        if not _SIG_RE.match(sig) or not signing.signatures_equal(expected, sig):
            extra = {} if key["livemode"] or not self._sandbox_debug else {"string_to_sign": sts}
            raise AuthenticationFailed(
                "the signature does not match: sign the six lines of string_to_sign with the "
                "key's secret (HMAC-SHA256, lower-case hex)"
                + ("; error.string_to_sign shows what the server signed" if extra else ""),
                code="invalid_signature",
                extra=extra,
            )
        pending = None
        if defer_nonce and getattr(self._nonces, "deferrable", False):
            pending = PendingNonce(key_id, nonce, ts + 2 * self._window_s)
        elif not await self._nonces.remember(key_id, nonce, now_s=ts,
                                             ttl_s=2 * self._window_s):
            raise replayed_nonce()
        return AuthContext(
            merchant_id=key["merchant_id"],
            livemode=bool(key["livemode"]),
            access_key_id=key_id,
            rate_limit_per_s=key["rate_limit_per_s"],
            pending_nonce=pending,
            merchant_terms=unprefixed(key, "m", MERCHANT_TERMS, merchants),
        )

    async def remember(self, pending: PendingNonce) -> None:
        """Write a deferred nonce on its own (the request was refused before its claim)."""
        now = int(time.time())
        if not await self._nonces.remember(pending.key_id, pending.nonce, now_s=now,
                                           ttl_s=max(pending.expires_at - now, 0)):
            raise replayed_nonce()

    async def _load_key(self, key_id: str) -> dict[str, Any]:
        if len(key_id) > 64 or not key_id.startswith(("ak_test_", "ak_live_")):
            row = None
        else:
            # PostgreSQL: the row as last read, while no process has changed it since
            # (storage/key_cache.py); a read otherwise, kept for the next request.
            cache = self._db.key_cache
            row = cache.get(key_id) if cache is not None else None
            if row is None:
                token = cache.token() if cache is not None else None
                async with self._db.read() as conn:
                    row = await direct(conn).fetchone(_KEY_SQL, {"id": key_id},
                                                      table=access_keys)
                if row is not None and cache is not None:
                    cache.put(key_id, row, token)
        if row is None:
            raise AuthenticationFailed(
                f"no access key {key_id[:64]!r}: check X-PSE-Access-Key (keys start with "
                "ak_test_ or ak_live_)",
                code="unknown_access_key",
            )
        return dict(row)  # a copy: authenticate takes the merchant's columns out of it

    @staticmethod
    def _check_key_usable(key: dict[str, Any], key_id: str, now: int) -> None:
        if key["status"] == "revoked":
            raise AuthenticationFailed(
                f"access key {key_id} was revoked; use an active key", code="key_revoked"
            )
        if key["expires_at"] is not None and key["expires_at"] <= now:
            raise AuthenticationFailed(
                f"access key {key_id} expired at {_utc(key['expires_at'])} after rotation; use "
                "its replacement", code="key_revoked",
            )
        if key["m_status"] in ("suspended", "rejected"):
            raise PermissionDenied(
                f"the merchant account is {key['m_status']}; contact the operator",
                code="merchant_not_active",
            )

    def _secret(self, key: dict[str, Any]) -> str:
        cache_key = (key["id"], key["secret_enc"])
        secret = self._secrets.get(cache_key)
        if secret is None:
            secret = self._box.decrypt(key["secret_enc"], context=secret_context(key["id"]))
            if len(self._secrets) >= SECRET_CACHE_MAX:
                self._secrets.clear()
            self._secrets[cache_key] = secret
        return secret


_KEY_SQL = (
    "SELECT k.id, k.merchant_id, k.livemode, k.secret_enc, k.status, k.expires_at, "
    f"k.ip_allowlist, k.rate_limit_per_s, m.status AS m_status, {prefixed('m', MERCHANT_TERMS)} "
    "FROM access_keys k JOIN merchants m ON m.id = k.merchant_id WHERE k.id = :id"
)
