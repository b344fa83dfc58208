"""The error contract (CONTRACT §1, §3, §7; RELIABILITY 11, 25): one JSON shape for every
failure, the offending ``param`` named, nothing written, and abusive input refused fast."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.api_asserts import assert_error
from tests.support.signer import sign_headers

INVALID = "invalid_request_error"
ONE_MIB = 1024 * 1024


def _key_count(merchant) -> int:
    return len(merchant.raw().get("/v1/access_keys").json()["data"])


@pytest.mark.parametrize("body", [b'{"description": ', b"not json", b'{"description": "a",}',
                                  b"\xff\xfe{}"])
def test_malformed_json_is_invalid_json(merchant, body):
    before = _key_count(merchant)
    res = merchant.raw().request("POST", "/v1/access_keys", raw_body=body)
    assert_error(res, 400, INVALID, "invalid_json")
    assert _key_count(merchant) == before


def test_unknown_field_is_parameter_unknown(merchant):
    before = _key_count(merchant)
    res = merchant.raw().post("/v1/access_keys", {"description": "x", "colour": "blue"})
    err = assert_error(res, 400, INVALID, "parameter_unknown", param="colour")
    assert "colour" in err["message"]
    assert _key_count(merchant) == before


@pytest.mark.parametrize("field, value", [("status", "revoked"), ("livemode", True),
                                          ("merchant_id", "mch_other"), ("secret", "sk_test_x"),
                                          ("rate_limit_per_s", 0)])
def test_read_only_fields_are_refused(merchant, field, value):
    raw = merchant.raw()
    res = raw.post(f"/v1/access_keys/{merchant.access_key}", {field: value})
    assert_error(res, 400, INVALID, "parameter_unknown", param=field)
    key = raw.get(f"/v1/access_keys/{merchant.access_key}").json()
    assert key["status"] == "active" and key["version"] == 1 and key["rate_limit_per_s"] is None


@pytest.mark.parametrize("path, body, param", [
    ("/v1/access_keys", {"description": 5}, "description"),
    ("/v1/access_keys", {"ip_allowlist": "10.0.0.0/8"}, "ip_allowlist"),
    ("/v1/access_keys", {"ip_allowlist": [10]}, "ip_allowlist[0]"),
    ("/v1/access_keys", {"mode": "staging"}, "mode"),
    ("/v1/access_keys/{key}/rotate", {"overlap_seconds": "60"}, "overlap_seconds"),
    ("/v1/access_keys/{key}/rotate", {"overlap_seconds": 60.0}, "overlap_seconds"),
    ("/v1/access_keys/{key}/rotate", {"overlap_seconds": True}, "overlap_seconds"),
])
def test_wrong_type_is_400_with_param(merchant, path, body, param):
    before = _key_count(merchant)
    res = merchant.raw().post(path.format(key=merchant.access_key), body)
    assert_error(res, 400, INVALID, "parameter_invalid", param=param)
    assert _key_count(merchant) == before


@pytest.mark.parametrize("body, content_type", [(b"[1, 2]", "application/json"),
                                                (b'"text"', "application/json"),
                                                (b'{"description": "x"}', "text/plain")])
def test_body_that_is_not_a_json_object_is_400(merchant, body, content_type):
    before = _key_count(merchant)
    res = merchant.raw().request("POST", "/v1/access_keys", raw_body=body,
                                 headers={"Content-Type": content_type})
    err = assert_error(res, 400, INVALID, "parameter_invalid", param=None)
    assert "JSON object" in err["message"] and "None" not in err["message"]
    assert _key_count(merchant) == before


def test_missing_body_is_an_empty_object_so_required_fields_are_named(merchant):
    # No body at all is taken as {} (actions like capture need nothing); a create that needs
    # fields then names the first missing one.
    res = merchant.raw().request("POST", "/v1/payments")
    err = assert_error(res, 400, INVALID, "parameter_missing", param="amount")
    assert "None" not in err["message"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/access_keys", b'{"description": "a\\u0000b"}', "description"),
    ("/v1/access_keys", b'{"ip_allowlist": ["10.0.0.0/8", "\\u0000"]}', "ip_allowlist[1]"),
    ("/v1/access_keys", b'{"desc\\u0000": "x"}', "desc\x00"),
    ("/v1/access_keys/ak_test_%00/revoke", b"{}", "path"),
])
def test_nul_characters_are_400_not_500(merchant, path, body, param):
    before = _key_count(merchant)
    res = merchant.raw().request("POST", path, raw_body=body)
    assert_error(res, 400, INVALID, "parameter_invalid", param=param)
    assert _key_count(merchant) == before


def test_nul_in_query_is_400_and_does_not_lose_log_rows(merchant):
    from tests.support.api_asserts import eventually

    raw = merchant.raw()
    res = raw.get("/v1/request_logs?cursor=%00")
    assert_error(res, 400, INVALID, "parameter_invalid", param="cursor")
    bad_path = raw.get("/v1/account%00")
    assert bad_path.status_code == 400, bad_path.text
    ok = raw.get("/v1/account")

    def _logged() -> None:
        rows = raw.get("/v1/request_logs?limit=10").json()["data"]
        ids = [r["id"] for r in rows]
        for r in (res, bad_path, ok):
            assert r.headers["x-request-id"] in ids

    eventually(_logged)


def test_escaped_backslash_u0000_text_is_fine(merchant):
    res = merchant.raw().request("POST", "/v1/access_keys",
                                 raw_body=b'{"description": "C:\\\\u0000"}')
    assert res.status_code == 201, res.text
    assert res.json()["description"] == "C:\\u0000"


def test_body_over_one_mib_is_413(merchant):
    body = b'{"description": "' + b"a" * ONE_MIB + b'"}'
    res = merchant.raw().request("POST", "/v1/access_keys", raw_body=body)
    err = assert_error(res, 413, INVALID, "body_too_large")
    assert str(ONE_MIB) in err["message"]


def test_chunked_body_over_one_mib_is_413(merchant):
    chunk = b"a" * 65536

    def _chunks():
        yield b'{"description": "'
        for _ in range(ONE_MIB // len(chunk) + 1):
            yield chunk
        yield b'"}'

    url = merchant.base_url + "/v1/access_keys"
    headers = sign_headers("POST", url, b"", merchant.access_key, merchant.secret)
    try:
        res = httpx.post(url, content=_chunks(), headers=headers)
    except httpx.TransportError:  # the server may close before the client finished writing
        return
    assert_error(res, 413, INVALID, "body_too_large")


def test_body_over_limit_is_413_even_unsigned(server):
    res = httpx.post(server.base_url + "/v1/access_keys", content=b"x" * (ONE_MIB + 1))
    assert_error(res, 413, INVALID, "body_too_large")


def test_unknown_route_is_json_404(merchant, server):
    res = merchant.raw().get("/v1/no_such_thing")
    err = assert_error(res, 404, INVALID, "route_not_found")
    assert "/v1/no_such_thing" in err["message"]
    assert_error(httpx.get(server.base_url + "/nowhere"), 404, INVALID, "route_not_found")
    # /v1 is authenticated before routing: an unsigned probe learns nothing about routes
    assert_error(httpx.get(server.base_url + "/v1/no_such_thing"), 401, "authentication_error",
                 "missing_signature")


def test_wrong_method_is_json_405(merchant):
    res = merchant.raw().request("DELETE", "/v1/account")
    assert_error(res, 405, INVALID, "method_not_allowed")


def test_every_response_has_a_request_id(merchant, server):
    seen = set()
    responses = [httpx.get(server.base_url + "/healthz"), httpx.get(server.base_url + "/metrics"),
                 httpx.get(server.base_url + "/openapi.json"), merchant.raw().get("/v1/account")]
    for res in responses:
        rid = res.headers["x-request-id"]
        assert rid.startswith("req_") and rid not in seen
        seen.add(rid)


def test_limit_out_of_range_is_400(merchant):
    raw = merchant.raw()
    for value in ("1000000", "0", "-1", "101", "ten"):
        res = raw.get(f"/v1/request_logs?limit={value}")
        assert_error(res, 400, INVALID, "parameter_invalid", param="limit")
    assert raw.get("/v1/request_logs?limit=100").status_code == 200


def test_bad_list_filters_are_400(merchant):
    raw = merchant.raw()
    res = raw.get("/v1/request_logs?created_gte=yesterday")
    assert_error(res, 400, INVALID, "parameter_invalid", param="created_gte")
    res = raw.get("/v1/request_logs?created_lt=2026-11-22T01:02:03%2B08:00")
    assert_error(res, 400, INVALID, "parameter_invalid", param="created_lt")
    res = raw.get("/v1/request_logs?cursor=" + "x" * 65)
    assert_error(res, 400, INVALID, "parameter_invalid", param="cursor")
    res = raw.get("/v1/request_logs?created_gte=99999999999999999999999")
    assert_error(res, 400, INVALID, "parameter_invalid", param="created_gte")
    res = raw.get("/v1/request_logs?created_gte=2026-11-22T01:02:03Z")
    assert res.status_code == 200, res.text
    res = raw.get("/v1/request_logs?created_gte=1763773200&status=200")
    assert res.status_code == 200, res.text


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_json_is_a_fast_400(merchant, depth):
    for body in (b"[" * depth + b"]" * depth,
                 b'{"description": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"):
        started = time.monotonic()
        res = merchant.raw().request("POST", "/v1/access_keys", raw_body=body)
        elapsed_s = time.monotonic() - started
        assert_error(res, 400, INVALID, "invalid_json")
        assert elapsed_s < 2.0
    assert merchant.raw().get("/v1/account").status_code == 200


def test_idempotency_key_too_long_is_400(merchant):
    res = merchant.raw().post("/v1/access_keys", {}, headers={"Idempotency-Key": "k" * 300})
    assert_error(res, 400, INVALID, "idempotency_key_invalid", param="Idempotency-Key")
    res = merchant.raw().post("/v1/access_keys", {}, headers={"Idempotency-Key": "k" * 255})
    assert res.status_code == 201, res.text


def test_idempotent_create_is_replayed(merchant):
    raw = merchant.raw()
    first = raw.post("/v1/access_keys", {"description": "once"},
                     headers={"Idempotency-Key": "create-once-1"})
    again = raw.post("/v1/access_keys", {"description": "once"},
                     headers={"Idempotency-Key": "create-once-1"})
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    other = raw.post("/v1/access_keys", {"description": "twice"},
                     headers={"Idempotency-Key": "create-once-1"})
    assert_error(other, 422, "idempotency_error", "idempotency_key_reused")
    keys = raw.get("/v1/access_keys").json()["data"]
    assert [k["description"] for k in keys].count("once") == 1
