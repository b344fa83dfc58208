"""The requestor: idempotency keys, bounded retries, fresh signatures, pagination, services."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import pathlib
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import openpse_sdk
from openpse_sdk import _signing
from openpse_sdk import client as client_module
from openpse_sdk.client import MAX_RETRY_AFTER_S, encode_query
from openpse_sdk.errors import APIConnectionError, APIError, IdempotencyError, InvalidRequestError

SECRET = "sk_test_unit"  # noqa: S105 - a throwaway test value

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []

    async def async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(client_module, "_sleep_s", recorded.append)
    monkeypatch.setattr(client_module, "_async_sleep_s", async_sleep)
    return recorded


@pytest.fixture
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(1763773200)
    monkeypatch.setattr(client_module, "_unix_now_s", lambda: next(ticks))


def _client(
    handler: Handler, base_url: str = "http://testserver", **kw: Any
) -> openpse_sdk.OpenPSE:
    return openpse_sdk.OpenPSE(
        base_url, "ak_test_1", SECRET, transport=httpx.MockTransport(handler), **kw
    )


def _scripted(*responses: httpx.Response | Exception) -> tuple[list[httpx.Request], Handler]:
    """A handler answering each request with the next scripted response (or raising it)."""
    seen: list[httpx.Request] = []
    script: Iterator[httpx.Response | Exception] = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = next(script)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return seen, handler


def _ok(body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else {"ok": True}, **kw)


def _fail(status: int, code: str, error_type: str = "api_error", **kw: Any) -> httpx.Response:
    error = {"type": error_type, "code": code, "message": code, "request_id": "req_x"}
    return httpx.Response(status, json={"error": error}, **kw)


def _verifies(request: httpx.Request) -> bool:
    path, _, query = request.url.raw_path.decode().partition("?")
    sts = _signing.string_to_sign(
        request.method,
        path,
        query,
        request.headers["X-PSE-Timestamp"],
        request.headers["X-PSE-Nonce"],
        request.content,
    )
    return _signing.sign(SECRET, sts) == request.headers["X-PSE-Signature"]


class TestIdempotencyKeys:
    def test_every_post_gets_a_uuid4(self) -> None:
        seen, handler = _scripted(_ok(), _ok())
        client = _client(handler)
        client.request("POST", "/v1/refunds", json={"payment": "pay_1"})
        client.request("POST", "/v1/refunds", json={"payment": "pay_1"})
        keys = [r.headers["Idempotency-Key"] for r in seen]
        assert all(uuid.UUID(k).version == 4 for k in keys)
        assert keys[0] != keys[1]

    def test_caller_key_is_used(self) -> None:
        seen, handler = _scripted(_ok(), _ok())
        client = _client(handler)
        client.payments.create(amount=1, currency="JPY", idempotency_key="order-1001")
        client.request("POST", "/v1/payments", json={}, headers={"idempotency-key": "hdr-1"})
        assert seen[0].headers.get_list("Idempotency-Key") == ["order-1001"]
        assert seen[1].headers.get_list("Idempotency-Key") == ["hdr-1"]

    def test_get_has_none(self) -> None:
        seen, handler = _scripted(_ok())
        _client(handler).payments.retrieve("pay_1")
        assert "Idempotency-Key" not in seen[0].headers


@pytest.mark.usefixtures("ticking_clock")
class TestRetries:
    def test_5xx_then_success_reuses_the_key_and_re_signs(self, sleeps: list[float]) -> None:
        seen, handler = _scripted(_fail(503, "x"), _fail(500, "x"), _ok({"id": "pay_1"}))
        result = _client(handler, max_retries=2).payments.create(amount=1, currency="JPY")
        assert result == {"id": "pay_1"}
        assert len(seen) == 3
        assert len({r.headers["Idempotency-Key"] for r in seen}) == 1
        assert len({r.headers["X-PSE-Nonce"] for r in seen}) == 3
        assert len({r.headers["X-PSE-Timestamp"] for r in seen}) == 3
        assert len({r.content for r in seen}) == 1
        assert all(_verifies(r) for r in seen)
        assert len(sleeps) == 2
        assert 0.25 <= sleeps[0] <= 0.5
        assert 0.5 <= sleeps[1] <= 1.0

    def test_bounded_by_max_retries(self, sleeps: list[float]) -> None:
        seen, handler = _scripted(*[_fail(500, "internal_error")] * 4)
        with pytest.raises(APIError) as info:
            _client(handler, max_retries=3).request("GET", "/v1/balance")
        assert len(seen) == 4
        assert info.value.http_status == 500
        assert len(sleeps) == 3

    def test_zero_retries(self, sleeps: list[float]) -> None:
        seen, handler = _scripted(_fail(503, "x"))
        with pytest.raises(APIError):
            _client(handler, max_retries=0).request("GET", "/v1/balance")
        assert (len(seen), sleeps) == (1, [])

    def test_retry_after_is_honoured_and_capped(self, sleeps: list[float]) -> None:
        _seen, handler = _scripted(
            _fail(429, "rate_limited", "rate_limit_error", headers={"Retry-After": "7"}),
            _fail(429, "rate_limited", "rate_limit_error", headers={"Retry-After": "3600"}),
            _ok(),
        )
        _client(handler).request("GET", "/v1/balance")
        assert sleeps == [7.0, MAX_RETRY_AFTER_S]

    def test_in_progress_409_is_retried(self, sleeps: list[float]) -> None:
        in_progress = _fail(409, "idempotency_request_in_progress", "idempotency_error")
        seen, handler = _scripted(in_progress, _ok())
        _client(handler).payments.confirm("pay_1")
        assert len(seen) == 2
        assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]

    @pytest.mark.parametrize(
        ("response", "cls"),
        [
            (_fail(409, "payment_invalid_state", "invalid_request_error"), InvalidRequestError),
            (_fail(422, "idempotency_key_reused", "idempotency_error"), IdempotencyError),
            (_fail(400, "parameter_invalid", "invalid_request_error"), InvalidRequestError),
        ],
    )
    def test_client_errors_are_not_retried(
        self, sleeps: list[float], response: httpx.Response, cls: type[Exception]
    ) -> None:
        seen, handler = _scripted(response)
        with pytest.raises(cls):
            _client(handler).payments.capture("pay_1")
        assert (len(seen), sleeps) == (1, [])

    def test_connection_errors_are_retried_then_raised(self, sleeps: list[float]) -> None:
        seen, handler = _scripted(*[httpx.ConnectError("refused")] * 3)
        with pytest.raises(APIConnectionError) as info:
            _client(handler, max_retries=2).payments.create(amount=1, currency="JPY")
        assert len(seen) == 3
        assert "after 3 attempt(s)" in info.value.message
        assert isinstance(info.value.__cause__, httpx.ConnectError)

    def test_read_timeout_then_success(self, sleeps: list[float]) -> None:
        seen, handler = _scripted(httpx.ReadTimeout("slow"), _ok({"id": "re_1"}))
        assert _client(handler).refunds.create(payment="pay_1") == {"id": "re_1"}
        assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]

    def test_non_network_transport_errors_are_not_retried(self, sleeps: list[float]) -> None:
        seen, handler = _scripted(httpx.UnsupportedProtocol("ftp"))
        with pytest.raises(APIConnectionError):
            _client(handler).request("GET", "/v1/balance")
        assert len(seen) == 1

    @pytest.mark.parametrize("max_retries", [-1, 11])
    def test_max_retries_is_limited(self, max_retries: int) -> None:
        with pytest.raises(ValueError, match="max_retries"):
            _client(_scripted()[1], max_retries=max_retries)


class TestWire:
    def test_body_bytes_are_compact_utf8_and_signed(self) -> None:
        seen, handler = _scripted(_ok())
        _client(handler).payments.create(amount=1000, currency="JPY", description="注文 #1")
        request = seen[0]
        assert (
            request.content == '{"amount":1000,"currency":"JPY","description":"注文 #1"}'.encode()
        )
        assert request.headers["Content-Type"] == "application/json; charset=utf-8"
        assert _verifies(request)

    def test_base_url_path_prefix_is_part_of_the_signed_path(self) -> None:
        seen, handler = _scripted(_ok())
        _client(handler, base_url="http://testserver/pse").balance.retrieve()
        assert seen[0].url.raw_path == b"/pse/v1/balance"
        assert _verifies(seen[0])

    def test_ids_are_one_path_segment(self) -> None:
        seen, handler = _scripted(_ok())
        _client(handler).payments.retrieve("pay_1/../x?y")
        assert seen[0].url.raw_path == b"/v1/payments/pay_1%2F..%2Fx%3Fy"
        assert _verifies(seen[0])

    def test_empty_id_is_refused(self) -> None:
        with pytest.raises(ValueError, match="non-empty"):
            _client(_scripted()[1]).refunds.retrieve("")

    def test_query_encoding(self) -> None:
        when = datetime.datetime(
            2026, 11, 22, 10, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=9))
        )
        query = encode_query(
            {
                "status": ["succeeded", "failed"],
                "flag": True,
                "skip": None,
                "created_gte": when,
                "q": "a+b c",
            }
        )
        assert query == (
            "status=succeeded&status=failed&flag=true&created_gte=2026-11-22T01%3A02%3A03Z&q=a%2Bb%20c"
        )

    def test_last_response(self) -> None:
        _seen, handler = _scripted(
            _ok(headers={"Idempotent-Replayed": "true", "X-Request-Id": "req_9"})
        )
        client = _client(handler)
        assert client.last_response is None
        client.payments.create(amount=1, currency="JPY")
        assert client.last_response is not None
        assert client.last_response.idempotent_replayed
        assert client.last_response.request_id == "req_9"
        assert client.last_response.headers["idempotent-replayed"] == "true"

    def test_non_json_success_is_an_api_error(self) -> None:
        _seen, handler = _scripted(httpx.Response(200, content=b"<html>"))
        with pytest.raises(APIError, match="without a JSON object"):
            _client(handler).balance.retrieve()

    def test_no_content(self) -> None:
        _seen, handler = _scripted(httpx.Response(204))
        assert _client(handler).webhook_endpoints.delete("we_1") == {}

    def test_repr_hides_the_secret(self) -> None:
        client = _client(_scripted()[1])
        assert SECRET not in repr(client)
        assert "ak_test_1" in repr(client)


def _page(ids: list[str], cursor: str | None) -> httpx.Response:
    data = [{"id": i} for i in ids]
    body = {"object": "list", "data": data, "has_more": cursor is not None, "next_cursor": cursor}
    return _ok(body)


class TestListAll:
    def test_follows_cursors(self) -> None:
        seen, handler = _scripted(_page(["a", "b"], "c1"), _page(["c"], "c2"), _page(["d"], None))
        items = list(_client(handler).list_all("/v1/payments", {"limit": 2, "status": "succeeded"}))
        assert [item["id"] for item in items] == ["a", "b", "c", "d"]
        queries = [r.url.params for r in seen]
        assert [q.get("cursor") for q in queries] == [None, "c1", "c2"]
        assert all(q["limit"] == "2" and q["status"] == "succeeded" for q in queries)

    def test_a_repeated_cursor_stops_the_loop(self) -> None:
        seen, handler = _scripted(_page(["a"], "c1"), _page(["b"], "c2"), _page(["c"], "c1"))
        with pytest.raises(APIError, match="repeated"):
            list(_client(handler).list_all("/v1/events"))
        assert len(seen) == 3

    def test_not_a_list(self) -> None:
        _seen, handler = _scripted(_ok({"object": "payment"}))
        with pytest.raises(APIError, match="list object"):
            list(_client(handler).list_all("/v1/payments"))


SERVICE_CALLS: list[tuple[str, Callable[[openpse_sdk.OpenPSE], object], str, str, Any]] = [
    (
        "payments.create",
        lambda c: c.payments.create(amount=1),
        "POST",
        "/v1/payments",
        {"amount": 1},
    ),
    (
        "payments.retrieve",
        lambda c: c.payments.retrieve("pay_1"),
        "GET",
        "/v1/payments/pay_1",
        None,
    ),
    ("payments.list", lambda c: c.payments.list(limit=5), "GET", "/v1/payments?limit=5", None),
    (
        "payments.confirm",
        lambda c: c.payments.confirm("pay_1"),
        "POST",
        "/v1/payments/pay_1/confirm",
        {},
    ),
    (
        "payments.capture",
        lambda c: c.payments.capture("pay_1", amount=5),
        "POST",
        "/v1/payments/pay_1/capture",
        {"amount": 5},
    ),
    (
        "payments.cancel",
        lambda c: c.payments.cancel("pay_1", cancellation_reason="duplicate"),
        "POST",
        "/v1/payments/pay_1/cancel",
        {"cancellation_reason": "duplicate"},
    ),
    (
        "refunds.create",
        lambda c: c.refunds.create(payment="pay_1"),
        "POST",
        "/v1/refunds",
        {"payment": "pay_1"},
    ),
    ("refunds.retrieve", lambda c: c.refunds.retrieve("re_1"), "GET", "/v1/refunds/re_1", None),
    ("refunds.list", lambda c: c.refunds.list(), "GET", "/v1/refunds", None),
    (
        "checkout.create",
        lambda c: c.checkout_sessions.create(amount=1),
        "POST",
        "/v1/checkout/sessions",
        {"amount": 1},
    ),
    (
        "checkout.retrieve",
        lambda c: c.checkout_sessions.retrieve("cs_1"),
        "GET",
        "/v1/checkout/sessions/cs_1",
        None,
    ),
    ("checkout.list", lambda c: c.checkout_sessions.list(), "GET", "/v1/checkout/sessions", None),
    (
        "checkout.expire",
        lambda c: c.checkout_sessions.expire("cs_1"),
        "POST",
        "/v1/checkout/sessions/cs_1/expire",
        {},
    ),
    (
        "events.list",
        lambda c: c.events.list(type="payment.succeeded"),
        "GET",
        "/v1/events?type=payment.succeeded",
        None,
    ),
    ("events.retrieve", lambda c: c.events.retrieve("evt_1"), "GET", "/v1/events/evt_1", None),
    (
        "events.redeliver",
        lambda c: c.events.redeliver("evt_1"),
        "POST",
        "/v1/events/evt_1/redeliver",
        {},
    ),
    (
        "webhooks.create",
        lambda c: c.webhook_endpoints.create(url="https://x"),
        "POST",
        "/v1/webhook_endpoints",
        {"url": "https://x"},
    ),
    (
        "webhooks.retrieve",
        lambda c: c.webhook_endpoints.retrieve("we_1"),
        "GET",
        "/v1/webhook_endpoints/we_1",
        None,
    ),
    ("webhooks.list", lambda c: c.webhook_endpoints.list(), "GET", "/v1/webhook_endpoints", None),
    (
        "webhooks.update",
        lambda c: c.webhook_endpoints.update("we_1", description="d"),
        "PATCH",
        "/v1/webhook_endpoints/we_1",
        {"description": "d"},
    ),
    (
        "webhooks.delete",
        lambda c: c.webhook_endpoints.delete("we_1"),
        "DELETE",
        "/v1/webhook_endpoints/we_1",
        None,
    ),
    (
        "webhooks.rotate",
        lambda c: c.webhook_endpoints.rotate_secret("we_1", expire_previous_in_seconds=60),
        "POST",
        "/v1/webhook_endpoints/we_1/rotate_secret",
        {"expire_previous_in_seconds": 60},
    ),
    (
        "webhooks.deliveries",
        lambda c: c.webhook_endpoints.list_deliveries("we_1"),
        "GET",
        "/v1/webhook_endpoints/we_1/deliveries",
        None,
    ),
    ("balance.retrieve", lambda c: c.balance.retrieve(), "GET", "/v1/balance", None),
    ("access_keys.list", lambda c: c.access_keys.list(), "GET", "/v1/access_keys", None),
    ("access_keys.create", lambda c: c.access_keys.create(), "POST", "/v1/access_keys", {}),
    (
        "access_keys.rotate",
        lambda c: c.access_keys.rotate("ak_test_2", overlap_seconds=3600),
        "POST",
        "/v1/access_keys/ak_test_2/rotate",
        {"overlap_seconds": 3600},
    ),
    (
        "access_keys.revoke",
        lambda c: c.access_keys.revoke("ak_test_2"),
        "POST",
        "/v1/access_keys/ak_test_2/revoke",
        {},
    ),
    (
        "access_keys.retrieve",
        lambda c: c.access_keys.retrieve("ak_test_2"),
        "GET",
        "/v1/access_keys/ak_test_2",
        None,
    ),
    (
        "access_keys.update",
        lambda c: c.access_keys.update("ak_test_2", ip_allowlist=["10.0.0.0/8"]),
        "POST",
        "/v1/access_keys/ak_test_2",
        {"ip_allowlist": ["10.0.0.0/8"]},
    ),
    ("account.retrieve", lambda c: c.account.retrieve(), "GET", "/v1/account", None),
    ("account.whoami", lambda c: c.account.whoami(), "GET", "/v1/whoami", None),
    (
        "request_logs.list",
        lambda c: c.request_logs.list(status=404),
        "GET",
        "/v1/request_logs?status=404",
        None,
    ),
    (
        "test_helpers.complete_3ds",
        lambda c: c.test_helpers.complete_3ds("pay_1", outcome="fail"),
        "POST",
        "/v1/test_helpers/payments/pay_1/complete_3ds",
        {"outcome": "fail"},
    ),
    (
        "test_helpers.pay_voucher",
        lambda c: c.test_helpers.pay_voucher("pay_1"),
        "POST",
        "/v1/test_helpers/payments/pay_1/pay_voucher",
        {},
    ),
    (
        "test_helpers.fund",
        lambda c: c.test_helpers.fund("pay_1", amount=500),
        "POST",
        "/v1/test_helpers/payments/pay_1/fund",
        {"amount": 500},
    ),
    (
        "test_helpers.settle",
        lambda c: c.test_helpers.settle("pay_1"),
        "POST",
        "/v1/test_helpers/payments/pay_1/settle",
        {},
    ),
    (
        "test_helpers.fail",
        lambda c: c.test_helpers.fail("pay_1"),
        "POST",
        "/v1/test_helpers/payments/pay_1/fail",
        {},
    ),
    (
        "test_helpers.pay_voucher_at",
        lambda c: c.test_helpers.pay_voucher("pay_1", store="lawson"),
        "POST",
        "/v1/test_helpers/payments/pay_1/pay_voucher",
        {"store": "lawson"},
    ),
    (
        "test_helpers.fail_with_code",
        lambda c: c.test_helpers.fail("pay_1", failure_code="account_closed"),
        "POST",
        "/v1/test_helpers/payments/pay_1/fail",
        {"failure_code": "account_closed"},
    ),
    (
        "test_helpers.complete_refund",
        lambda c: c.test_helpers.complete_refund("re_1", outcome="fail"),
        "POST",
        "/v1/test_helpers/refunds/re_1/complete",
        {"outcome": "fail"},
    ),
    (
        "test_helpers.retrieve_clock",
        lambda c: c.test_helpers.retrieve_clock(),
        "GET",
        "/v1/test_helpers/clock",
        None,
    ),
    (
        "test_helpers.advance_clock",
        lambda c: c.test_helpers.advance_clock(seconds=3600),
        "POST",
        "/v1/test_helpers/clock/advance",
        {"seconds": 3600},
    ),
]

LIST_ALL_CALLS: list[tuple[str, Callable[[openpse_sdk.OpenPSE], Any], str]] = [
    ("payments", lambda c: c.payments.list_all(status="succeeded"), "/v1/payments"),
    ("refunds", lambda c: c.refunds.list_all(status="succeeded"), "/v1/refunds"),
    ("checkout", lambda c: c.checkout_sessions.list_all(status="succeeded"),
     "/v1/checkout/sessions"),
    ("events", lambda c: c.events.list_all(status="succeeded"), "/v1/events"),
    ("endpoints", lambda c: c.webhook_endpoints.list_all(status="succeeded"),
     "/v1/webhook_endpoints"),
    ("deliveries", lambda c: c.webhook_endpoints.list_all_deliveries("we_1", status="succeeded"),
     "/v1/webhook_endpoints/we_1/deliveries"),
    ("access_keys", lambda c: c.access_keys.list_all(status="succeeded"), "/v1/access_keys"),
    ("request_logs", lambda c: c.request_logs.list_all(status="succeeded"), "/v1/request_logs"),
]


@pytest.mark.parametrize(
    ("call", "path"), [pytest.param(call, path, id=name) for name, call, path in LIST_ALL_CALLS]
)
def test_every_list_auto_paginates(call: Callable[[openpse_sdk.OpenPSE], Any], path: str) -> None:
    seen, handler = _scripted(_page(["a", "b"], "b"), _page(["c"], None))
    iterator = call(_client(handler))
    assert seen == []  # lazy: nothing is fetched before the first item is asked for
    assert [item["id"] for item in iterator] == ["a", "b", "c"]
    assert [r.url.path for r in seen] == [path, path]
    assert [r.url.params.get("cursor") for r in seen] == [None, "b"]
    assert all(r.url.params["status"] == "succeeded" for r in seen)


@pytest.mark.parametrize(
    ("call", "method", "target", "body"),
    [
        pytest.param(call, method, target, body, id=name)
        for name, call, method, target, body in SERVICE_CALLS
    ],
)
def test_service_method_and_path(
    call: Callable[[openpse_sdk.OpenPSE], object], method: str, target: str, body: Any
) -> None:
    seen, handler = _scripted(_ok())
    call(_client(handler))
    request = seen[0]
    assert (request.method, request.url.raw_path.decode()) == (method, target)
    assert (json.loads(request.content) if request.content else None) == body
    assert ("Idempotency-Key" in request.headers) == (method == "POST")
    assert _verifies(request)


class TestAsyncClient:
    def _client(self, handler: Handler, **kw: Any) -> openpse_sdk.AsyncOpenPSE:
        return openpse_sdk.AsyncOpenPSE(
            "http://testserver", "ak_test_1", SECRET, transport=httpx.MockTransport(handler), **kw
        )

    def test_retry_and_services(self, sleeps: list[float]) -> None:
        seen, handler = _scripted(_fail(502, "x"), _ok({"id": "pay_1"}))

        async def run() -> dict[str, Any]:
            async with self._client(handler) as client:
                return await client.payments.create(amount=1, currency="JPY")

        assert asyncio.run(run()) == {"id": "pay_1"}
        assert len(seen) == 2
        assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
        assert seen[0].headers["X-PSE-Nonce"] != seen[1].headers["X-PSE-Nonce"]
        assert all(_verifies(r) for r in seen)
        assert len(sleeps) == 1

    def test_list_all_and_errors(self) -> None:
        _seen, handler = _scripted(
            _page(["a"], "c1"),
            _page(["b"], None),
            _fail(404, "resource_missing", "invalid_request_error"),
        )

        async def run() -> list[str]:
            async with self._client(handler, max_retries=0) as client:
                ids = [item["id"] async for item in client.refunds.list_all(payment="pay_1")]
                with pytest.raises(openpse_sdk.NotFoundError):
                    await client.refunds.retrieve("re_missing")
                return ids

        assert asyncio.run(run()) == ["a", "b"]


def test_public_surface_is_pinned() -> None:
    assert sorted(openpse_sdk.__all__) == sorted(
        [
            "APIConnectionError",
            "APIError",
            "AsyncOpenPSE",
            "AuthenticationError",
            "CardError",
            "DEFAULT_MAX_RETRIES",
            "DEFAULT_TIMEOUT_S",
            "IdempotencyError",
            "InvalidRequestError",
            "JSONObject",
            "NotFoundError",
            "OpenPSE",
            "OpenPSEError",
            "PermissionDeniedError",
            "RateLimitError",
            "ResponseMeta",
            "SignatureVerificationError",
            "__version__",
            "webhooks",
        ]
    )
    for name in openpse_sdk.__all__:
        assert hasattr(openpse_sdk, name)


def test_sdk_does_not_import_the_server() -> None:
    package_dir = pathlib.Path(openpse_sdk.__file__).parent
    server_import = re.compile(r"^\s*(from|import)\s+openpse(\.|\s|$)", re.MULTILINE)
    sources = {path.name: path.read_text() for path in package_dir.glob("*.py")}
    assert "client.py" in sources
    assert [name for name, text in sources.items() if server_import.search(text)] == []
