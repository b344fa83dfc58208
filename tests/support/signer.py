"""A hand-rolled signed HTTP client for tests that need to bend the rules (bad signatures,
old timestamps, replayed nonces). Normal tests use the SDK."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from openpse.domain.signing import string_to_sign


def sign_headers(
    method: str,
    url: str,
    body: bytes,
    key: str,
    secret: str,
    *,
    timestamp: str | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    parts = urlsplit(url)
    ts = timestamp if timestamp is not None else str(int(time.time()))
    nonce = nonce or secrets.token_urlsafe(18)
    sts = string_to_sign(method, parts.path, parts.query, ts, nonce, body)
    sig = hmac.new(secret.encode(), sts.encode(), hashlib.sha256).hexdigest()
    return {
        "X-PSE-Access-Key": key,
        "X-PSE-Timestamp": ts,
        "X-PSE-Nonce": nonce,
        "X-PSE-Signature": sig,
    }


def encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class RawClient:
    def __init__(self, base_url: str, key: str, secret: str) -> None:
        self.base_url = base_url
        self.key = key
        self.secret = secret
        self.http = httpx.Client(timeout=30.0)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        **sign_kw: Any,
    ) -> httpx.Response:
        body = (
            raw_body
            if raw_body is not None
            else (encode(json_body) if json_body is not None else b"")
        )
        url = self.base_url + path
        hdrs = sign_headers(method, url, body, self.key, self.secret, **sign_kw)
        if body:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        return self.http.request(method, url, content=body, headers=hdrs)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, data: Any = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, json_body=data if data is not None else {}, **kw)
