"""Assertions on the contract's error shape (CONTRACT §1), shared by the API tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

_UNSET: Any = object()
T = TypeVar("T")
ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "idempotency_error",
    "rate_limit_error", "card_error", "api_error",
})


def assert_error(res: httpx.Response, status: int, type_: str, code: str, *,
                 param: Any = _UNSET) -> dict[str, Any]:
    """The response is the contract's error body with this status, type and code; returns it."""
    assert res.status_code == status, (res.status_code, res.text)
    assert res.headers["content-type"].startswith("application/json"), res.headers
    err = res.json()["error"]
    assert err["type"] == type_, err
    assert err["type"] in ERROR_TYPES
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["request_id"].startswith("req_"), err
    assert err["request_id"] == res.headers["x-request-id"], (err, res.headers)
    if param is not _UNSET:
        assert err["param"] == param, err
    else:
        assert "param" in err
    return dict(err)


def eventually(fn: Callable[[], T], *, timeout_s: float = 5.0, interval_s: float = 0.1) -> T:
    """Call ``fn`` until it stops raising AssertionError (bounded); the last error propagates."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval_s)
