"""The SDK signs exactly as contract §2 says, and maps error answers to its error tree.

Expected signatures are the contract's worked examples (also checked with ``openssl dgst``).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import openpse_sdk
from openpse_sdk import _signing
from openpse_sdk import client as client_module
from openpse_sdk.errors import (
    APIError,
    AuthenticationError,
    CardError,
    IdempotencyError,
    InvalidRequestError,
    NotFoundError,
    OpenPSEError,
    PermissionDeniedError,
    RateLimitError,
    error_from_response,
)

SECRET = "sk_test_5f3c9a1e7b2d4c6a8e0f1a3b5c7d9e1f"  # noqa: S105 - contract §2 example
TIMESTAMP_S = 1763773200
NONCE = "n0nce-AbC_123456789"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
GET_CANONICAL = "limit=2&merchant_order_id=%E6%B3%A8%E6%96%87%20%2342&status=succeeded"
GET_SIGNATURE = "6434311bcf95503f20276beac19640b94243b1aaad4a01f99f15195f46ccb8c4"
POST_BODY = (
    b'{"amount":2000,"currency":"JPY","merchant_order_id":"ord-1001","payment_method":'
    b'{"type":"card","card":{"number":"4242424242424242","exp_month":12,"exp_year":2034,'
    b'"cvc":"123"}},"confirm":true}'
)
POST_BODY_SHA256 = "492c5360062a7b59fa105201149dfb45008b73f3249206832b5d3f32d5175c1a"
POST_SIGNATURE = "17db9f2a078fea38f7006b30349e53ac01bc7968b0d0bf7b9dd7cb42fb242b51"


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_unix_now_s", lambda: TIMESTAMP_S)
    monkeypatch.setattr(client_module, "_new_nonce", lambda: NONCE)


def _client(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> openpse_sdk.OpenPSE:
    kw.setdefault("max_retries", 0)
    return openpse_sdk.OpenPSE(
        "http://testserver", "ak_test_1", SECRET, transport=httpx.MockTransport(handler), **kw
    )


def _capture() -> tuple[list[httpx.Request], Callable[[httpx.Request], httpx.Response]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "payment", "id": "pay_1"})

    return seen, handler


class TestSigningCopy:
    def test_get_example(self) -> None:
        query = "status=succeeded&limit=2&merchant_order_id=%E6%B3%A8%E6%96%87%20%2342"
        assert _signing.canonical_query(query) == GET_CANONICAL
        sts = _signing.string_to_sign("GET", "/v1/payments", query, TIMESTAMP_S, NONCE, b"")
        assert sts.endswith(EMPTY_SHA256)
        assert _signing.sign(SECRET, sts) == GET_SIGNATURE

    def test_post_example(self) -> None:
        assert _signing.body_sha256(POST_BODY) == POST_BODY_SHA256
        sts = _signing.string_to_sign("post", "/v1/payments", "", TIMESTAMP_S, NONCE, POST_BODY)
        assert _signing.sign(SECRET, sts) == POST_SIGNATURE

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [("b=2&a=3&a=1", "a=1&a=3&b=2"), ("q=a+b", "q=a%2Bb"), ("t=a~b*c", "t=a~b%2Ac"), ("", "")],
    )
    def test_hand_vectors(self, raw: str, expected: str) -> None:
        assert _signing.canonical_query(raw) == expected


@pytest.mark.usefixtures("fixed_clock")
class TestClientSignsTheContractExamples:
    def test_get(self) -> None:
        seen, handler = _capture()
        params = {"status": "succeeded", "limit": 2, "merchant_order_id": "注文 #42"}
        _client(handler).request("GET", "/v1/payments", params=params)
        request = seen[0]
        assert request.url.raw_path == (
            b"/v1/payments?status=succeeded&limit=2&merchant_order_id=%E6%B3%A8%E6%96%87%20%2342"
        )
        assert request.content == b""
        assert request.headers["X-PSE-Access-Key"] == "ak_test_1"
        assert request.headers["X-PSE-Timestamp"] == str(TIMESTAMP_S)
        assert request.headers["X-PSE-Nonce"] == NONCE
        assert request.headers["X-PSE-Signature"] == GET_SIGNATURE
        assert "Idempotency-Key" not in request.headers

    def test_post(self) -> None:
        seen, handler = _capture()
        body: dict[str, Any] = {
            "amount": 2000,
            "currency": "JPY",
            "merchant_order_id": "ord-1001",
            "payment_method": {
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "cvc": "123",
                },
            },
            "confirm": True,
        }
        _client(handler).payments.create(**body)
        request = seen[0]
        assert request.method == "POST"
        assert request.url.raw_path == b"/v1/payments"
        assert request.content == POST_BODY
        assert request.headers["Content-Type"].startswith("application/json")
        assert request.headers["X-PSE-Signature"] == POST_SIGNATURE


def _error_response(
    status: int,
    error: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    payload = content if content is not None else json.dumps({"error": error}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=payload, headers=headers)

    return handler


def _raised(handler: Callable[[httpx.Request], httpx.Response]) -> OpenPSEError:
    with pytest.raises(OpenPSEError) as info:
        _client(handler).request("GET", "/v1/payments/pay_1")
    return info.value


def _err(error_type: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": error_type,
        "code": code,
        "message": f"{code} happened",
        "param": None,
        "request_id": "req_1",
        **extra,
    }


class TestErrorMapping:
    @pytest.mark.parametrize(
        ("status", "error_type", "code", "cls"),
        [
            (400, "invalid_request_error", "parameter_invalid", InvalidRequestError),
            (404, "invalid_request_error", "resource_missing", NotFoundError),
            (409, "invalid_request_error", "payment_invalid_state", InvalidRequestError),
            (401, "authentication_error", "invalid_signature", AuthenticationError),
            (403, "permission_error", "ip_not_allowed", PermissionDeniedError),
            (422, "idempotency_error", "idempotency_key_reused", IdempotencyError),
            (409, "idempotency_error", "idempotency_request_in_progress", IdempotencyError),
            (429, "rate_limit_error", "rate_limited", RateLimitError),
            (402, "card_error", "card_declined", CardError),
            (500, "api_error", "internal_error", APIError),
            (502, "api_error", "acquirer_unavailable", APIError),
        ],
    )
    def test_by_type(self, status: int, error_type: str, code: str, cls: type[Exception]) -> None:
        error = _raised(_error_response(status, _err(error_type, code)))
        assert type(error) is cls
        assert (error.http_status, error.type, error.code) == (status, error_type, code)
        assert error.request_id == "req_1"
        assert error.message == f"{code} happened"
        assert "(request req_1)" in str(error)

    def test_not_found_is_an_invalid_request_error(self) -> None:
        error = _raised(_error_response(404, _err("invalid_request_error", "resource_missing")))
        assert isinstance(error, InvalidRequestError)

    def test_param_is_carried(self) -> None:
        body = _err("invalid_request_error", "invalid_amount", param="amount")
        assert _raised(_error_response(400, body)).param == "amount"

    def test_card_error_carries_the_payment(self) -> None:
        payment = {"id": "pay_1", "status": "failed", "failure_code": "card_declined"}
        error = _raised(_error_response(402, _err("card_error", "card_declined", payment=payment)))
        assert isinstance(error, CardError)
        assert error.payment == payment

    def test_rate_limit_error_carries_retry_after(self) -> None:
        handler = _error_response(
            429, _err("rate_limit_error", "rate_limited"), headers={"Retry-After": "3"}
        )
        error = _raised(handler)
        assert isinstance(error, RateLimitError)
        assert error.retry_after == 3.0
        assert error.headers["retry-after"] == "3"

    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            (400, InvalidRequestError),
            (401, AuthenticationError),
            (404, NotFoundError),
            (402, CardError),
            (429, RateLimitError),
            (503, APIError),
            (418, APIError),
        ],
    )
    def test_status_fallback_for_non_json_bodies(self, status: int, cls: type[Exception]) -> None:
        handler = _error_response(
            status, content=b"<html>Bad Gateway</html>", headers={"X-Request-Id": "req_h"}
        )
        error = _raised(handler)
        assert type(error) is cls
        assert error.message == f"the server answered HTTP {status}: '<html>Bad Gateway</html>'"
        assert error.request_id == "req_h"
        assert error.body == "<html>Bad Gateway</html>"

    def test_unknown_type_falls_back_to_status(self) -> None:
        error = _raised(_error_response(403, _err("brand_new_error", "x")))
        assert type(error) is PermissionDeniedError

    def test_request_id_falls_back_to_the_header(self) -> None:
        body = {"type": "api_error", "code": "x", "message": "boom"}
        error = _raised(_error_response(500, body, headers={"X-Request-Id": "req_hdr"}))
        assert error.request_id == "req_hdr"


class TestClockSkewHint:
    def test_exact_skew_from_the_date_header(self) -> None:
        headers = httpx.Headers({"Date": email.utils.formatdate(TIMESTAMP_S, usegmt=True)})
        content = json.dumps(
            {"error": _err("authentication_error", "timestamp_out_of_window")}
        ).encode()
        ahead = error_from_response(401, headers, content, now_s=TIMESTAMP_S + 400)
        assert ahead.message == (
            "timestamp_out_of_window happened (hint: the local clock is 400 seconds ahead of "
            "the server's Date header; synchronise it, e.g. with NTP)"
        )
        behind = error_from_response(401, headers, content, now_s=TIMESTAMP_S - 3600)
        assert "3600 seconds behind the server's Date header" in behind.message

    def test_through_the_client(self) -> None:
        server_date = email.utils.formatdate(time.time() - 120, usegmt=True)
        handler = _error_response(
            401,
            _err("authentication_error", "timestamp_out_of_window"),
            headers={"Date": server_date},
        )
        error = _raised(handler)
        assert isinstance(error, AuthenticationError)
        assert error.code == "timestamp_out_of_window"
        assert re.search(r"the local clock is 12[01] seconds ahead of", error.message)

    def test_the_servers_own_measure_wins(self) -> None:
        error_body = {**_err("authentication_error", "timestamp_out_of_window"),
                      "skew_seconds": -420, "server_time": "2026-11-22T01:02:03Z"}
        headers = httpx.Headers({"Date": email.utils.formatdate(TIMESTAMP_S, usegmt=True)})
        content = json.dumps({"error": error_body}).encode()
        error = error_from_response(401, headers, content, now_s=TIMESTAMP_S)
        assert isinstance(error, AuthenticationError)
        assert error.clock_skew_s == -420
        assert "420 seconds behind the server's clock" in error.message

    def test_without_a_date_header(self) -> None:
        error = _raised(
            _error_response(401, _err("authentication_error", "timestamp_out_of_window"))
        )
        assert "check that this machine's clock is synchronised" in error.message

    def test_other_codes_get_no_hint(self) -> None:
        handler = _error_response(
            401,
            _err("authentication_error", "invalid_signature"),
            headers={"Date": email.utils.formatdate(0, usegmt=True)},
        )
        assert "hint" not in _raised(handler).message
