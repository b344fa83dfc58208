"""Signed requests against a real server (CONTRACT §2; RELIABILITY 5, 6, 7, 9).

Every authentication error code with its exact type and status, tampering with each signed
part, replays (also across two server processes on one database) and IP allowlists, with and
without a trusted proxy in front.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from openpse.domain.signing import string_to_sign
from tests.conftest import MerchantKit, make_server, new_merchant
from tests.support.api_asserts import assert_error
from tests.support.ledger import VISA, payment_body
from tests.support.signer import encode, sign_headers

AUTH = "authentication_error"
_UTC_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _send(kit: MerchantKit, method: str, path: str, body: bytes = b"", *,
          signed_method: str | None = None, signed_path: str | None = None,
          signed_body: bytes | None = None, secret: str | None = None,
          **sign_kw: str) -> httpx.Response:
    """Sign one request (optionally a different one than is sent) and send it."""
    headers = sign_headers(signed_method or method, kit.base_url + (signed_path or path),
                           body if signed_body is None else signed_body, kit.access_key,
                           secret or kit.secret, **sign_kw)
    if body:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, kit.base_url + path, content=body, headers=headers)


@pytest.fixture(scope="module")
def second_server(migrated_db, tmp_path_factory):
    srv = make_server(migrated_db, tmp_path_factory.mktemp("server2")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxied_server(migrated_db, tmp_path_factory):
    srv = make_server(migrated_db, tmp_path_factory.mktemp("proxied"),
                      OPENPSE_TRUSTED_PROXIES="127.0.0.1/32").start()
    yield srv
    srv.stop()


# ---- missing_signature / unknown_access_key -----------------------------------------------------


@pytest.mark.parametrize("header", ["X-PSE-Access-Key", "X-PSE-Timestamp", "X-PSE-Nonce",
                                    "X-PSE-Signature"])
def test_each_missing_header_is_missing_signature(merchant, header):
    headers = sign_headers("GET", merchant.base_url + "/v1/account", b"", merchant.access_key,
                           merchant.secret)
    del headers[header]
    res = httpx.get(merchant.base_url + "/v1/account", headers=headers)
    err = assert_error(res, 401, AUTH, "missing_signature")
    assert header in err["message"]


def test_no_headers_at_all_is_missing_signature(server):
    assert_error(httpx.get(server.base_url + "/v1/account"), 401, AUTH, "missing_signature")


@pytest.mark.parametrize("nonce", ["short", "x" * 65, "has space in it 0123", "ünïcödé-nonce-0123"])
def test_malformed_nonce_is_refused(merchant, nonce):
    headers = sign_headers("GET", merchant.base_url + "/v1/account", b"", merchant.access_key,
                           merchant.secret)
    headers["X-PSE-Nonce"] = nonce
    res = httpx.get(merchant.base_url + "/v1/account",
                    headers={k: v.encode() for k, v in headers.items()})
    assert_error(res, 401, AUTH, "missing_signature")


@pytest.mark.parametrize("key_id", ["ak_test_doesnotexist000000000000", "ak_live_nothere",
                                    "pk_something_else", "ak_test_" + "x" * 200])
def test_unknown_access_key(merchant, key_id):
    kit = MerchantKit(merchant.merchant_id, key_id, merchant.secret, merchant.base_url)
    assert_error(_send(kit, "GET", "/v1/account"), 401, AUTH, "unknown_access_key")


# ---- key_revoked --------------------------------------------------------------------------------


def test_revoked_key_is_key_revoked(merchant):
    raw = merchant.raw()
    assert raw.get("/v1/account").status_code == 200
    res = raw.post(f"/v1/access_keys/{merchant.access_key}/revoke")
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "revoked"
    assert_error(raw.get("/v1/account"), 401, AUTH, "key_revoked")


def test_rotated_key_after_overlap_is_key_revoked(merchant):
    raw = merchant.raw()
    res = raw.post(f"/v1/access_keys/{merchant.access_key}/rotate", {"overlap_seconds": 0})
    assert res.status_code == 201, res.text
    new = res.json()
    assert_error(raw.get("/v1/account"), 401, AUTH, "key_revoked")
    successor = MerchantKit(merchant.merchant_id, new["id"], new["secret"], merchant.base_url)
    assert successor.raw().get("/v1/account").status_code == 200


# ---- timestamp_out_of_window --------------------------------------------------------------------


def _assert_server_time_in(message: str) -> None:
    stamps = _UTC_RE.findall(message)
    assert stamps, message
    server_time = datetime.strptime(stamps[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((server_time - datetime.now(UTC)).total_seconds()) < 10, message


@pytest.mark.parametrize("offset_s, direction", [(-360, "behind"), (360, "ahead of")])
def test_timestamp_six_minutes_off_is_refused(merchant, offset_s, direction):
    ts = str(int(time.time()) + offset_s)
    err = assert_error(merchant.raw().get("/v1/account", timestamp=ts), 401, AUTH,
                       "timestamp_out_of_window")
    _assert_server_time_in(err["message"])
    match = re.search(r"is (\d+) s (behind|ahead of) the server", err["message"])
    assert match, err["message"]
    assert 358 <= int(match.group(1)) <= 362 and match.group(2) == direction
    assert abs(err["skew_seconds"] - offset_s) <= 2
    assert _UTC_RE.fullmatch(err["server_time"])


def test_timestamp_inside_window_is_accepted(merchant):
    ts = str(int(time.time()) - 240)
    assert merchant.raw().get("/v1/account", timestamp=ts).status_code == 200


def test_millisecond_timestamp_says_milliseconds(merchant):
    ts = str(int(time.time() * 1000))
    err = assert_error(merchant.raw().get("/v1/account", timestamp=ts), 401, AUTH,
                       "timestamp_out_of_window")
    assert "milliseconds" in err["message"]
    _assert_server_time_in(err["message"])


def test_iso_timestamp_with_offset_says_why(merchant):
    ts = datetime.now(timezone(timedelta(hours=8))).isoformat(timespec="seconds")
    assert ts.endswith("+08:00")
    err = assert_error(merchant.raw().get("/v1/account", timestamp=ts), 401, AUTH,
                       "timestamp_out_of_window")
    assert "Unix" in err["message"] and "seconds" in err["message"]
    assert "formatted date" in err["message"]
    _assert_server_time_in(err["message"])


@pytest.mark.parametrize("ts", ["9" * 5000, "1763773200.5", "-60", "0x69211a10"])
def test_garbage_timestamp_is_a_401_not_a_crash(merchant, ts):
    err = assert_error(merchant.raw().get("/v1/account", timestamp=ts), 401, AUTH,
                       "timestamp_out_of_window")
    assert "Unix" in err["message"]


# ---- invalid_signature: one byte changed in each signed part ------------------------------------


def test_changed_method_is_invalid_signature(merchant):
    res = _send(merchant, "GET", "/v1/access_keys", signed_method="POST")
    assert_error(res, 401, AUTH, "invalid_signature")


def test_changed_path_is_invalid_signature(merchant):
    res = _send(merchant, "GET", "/v1/access_keys", signed_path="/v1/access_keyz")
    assert_error(res, 401, AUTH, "invalid_signature")


def test_query_order_is_not_a_change(merchant):
    res = _send(merchant, "GET", "/v1/request_logs?status=200&limit=2",
                signed_path="/v1/request_logs?limit=2&status=200")
    assert res.status_code == 200, res.text


def test_changed_query_value_is_invalid_signature(merchant):
    res = _send(merchant, "GET", "/v1/request_logs?limit=3&status=200",
                signed_path="/v1/request_logs?limit=2&status=200")
    assert_error(res, 401, AUTH, "invalid_signature")


def test_changed_nonce_is_invalid_signature(merchant):
    headers = sign_headers("GET", merchant.base_url + "/v1/account", b"", merchant.access_key,
                           merchant.secret, nonce="nonce-aaaaaaaaaaaaaaaa")
    headers["X-PSE-Nonce"] = "nonce-aaaaaaaaaaaaaaab"
    res = httpx.get(merchant.base_url + "/v1/account", headers=headers)
    assert_error(res, 401, AUTH, "invalid_signature")


def test_changed_timestamp_is_invalid_signature(merchant):
    headers = sign_headers("GET", merchant.base_url + "/v1/account", b"", merchant.access_key,
                           merchant.secret)
    headers["X-PSE-Timestamp"] = str(int(headers["X-PSE-Timestamp"]) - 1)
    res = httpx.get(merchant.base_url + "/v1/account", headers=headers)
    assert_error(res, 401, AUTH, "invalid_signature")


def test_changed_body_byte_is_invalid_signature_and_writes_nothing(merchant):
    raw = merchant.raw()
    before = len(raw.get("/v1/access_keys").json()["data"])
    signed = encode({"description": "key-a"})
    sent = encode({"description": "key-b"})
    assert len(signed) == len(sent)
    res = _send(merchant, "POST", "/v1/access_keys", sent, signed_body=signed)
    assert_error(res, 401, AUTH, "invalid_signature")
    assert len(raw.get("/v1/access_keys").json()["data"]) == before


def test_uppercase_hex_signature_is_refused(merchant):
    headers = sign_headers("GET", merchant.base_url + "/v1/account", b"", merchant.access_key,
                           merchant.secret)
    headers["X-PSE-Signature"] = headers["X-PSE-Signature"].upper()
    res = httpx.get(merchant.base_url + "/v1/account", headers=headers)
    assert_error(res, 401, AUTH, "invalid_signature")


def test_sandbox_echoes_string_to_sign_for_a_wrong_secret(merchant):
    path = "/v1/request_logs?status=200&limit=5&note=%E6%B3%A8%E6%96%87%20%2342"
    body = b""
    headers = sign_headers("GET", merchant.base_url + path, body, merchant.access_key,
                           "sk_test_" + "0" * 32)
    res = httpx.get(merchant.base_url + path, headers=headers)
    err = assert_error(res, 401, AUTH, "invalid_signature")
    expected = string_to_sign("GET", "/v1/request_logs",
                              "status=200&limit=5&note=%E6%B3%A8%E6%96%87%20%2342",
                              headers["X-PSE-Timestamp"], headers["X-PSE-Nonce"], body)
    assert err["string_to_sign"] == expected
    assert err["string_to_sign"].split("\n")[2] == (
        "limit=5&note=%E6%B3%A8%E6%96%87%20%2342&status=200")


async def test_live_key_never_echoes_string_to_sign(services, server):
    live = await new_merchant(services, server.base_url, livemode=True)
    assert live.access_key.startswith("ak_live_")
    bad = MerchantKit(live.merchant_id, live.access_key, "sk_live_" + "0" * 32, live.base_url)
    err = assert_error(bad.raw().get("/v1/account"), 401, AUTH, "invalid_signature")
    assert "string_to_sign" not in err
    assert live.raw().get("/v1/account").json()["livemode"] is True


# ---- replayed_nonce -----------------------------------------------------------------------------


def test_same_signed_request_twice_is_replayed_nonce(merchant):
    url = merchant.base_url + "/v1/account"
    headers = sign_headers("GET", url, b"", merchant.access_key, merchant.secret)
    assert httpx.get(url, headers=headers).status_code == 200
    assert_error(httpx.get(url, headers=headers), 401, AUTH, "replayed_nonce")


def test_replayed_post_runs_once(merchant):
    body = encode({"description": "replay me"})
    url = merchant.base_url + "/v1/access_keys"
    headers = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    headers["Content-Type"] = "application/json"
    assert httpx.post(url, content=body, headers=headers).status_code == 201
    assert_error(httpx.post(url, content=body, headers=headers), 401, AUTH, "replayed_nonce")
    keys = merchant.raw().get("/v1/access_keys").json()["data"]
    assert [k["description"] for k in keys].count("replay me") == 1


def test_replayed_post_with_idempotency_key_is_refused_not_replayed(merchant):
    # The nonce of a POST with an Idempotency-Key is written in the claim's transaction: the
    # very same signed request sent again must still be a replayed nonce, not a replay.
    body = encode({"description": "keyed replay"})
    url = merchant.base_url + "/v1/access_keys"
    headers = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    headers |= {"Content-Type": "application/json", "Idempotency-Key": "keyed-replay-1"}
    assert httpx.post(url, content=body, headers=headers).status_code == 201
    assert_error(httpx.post(url, content=body, headers=headers), 401, AUTH, "replayed_nonce")
    # a fresh signature with the same key replays the stored answer
    again = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    again |= {"Content-Type": "application/json", "Idempotency-Key": "keyed-replay-1"}
    replayed = httpx.post(url, content=body, headers=again)
    assert replayed.status_code == 201 and replayed.headers["idempotent-replayed"] == "true"
    keys = merchant.raw().get("/v1/access_keys").json()["data"]
    assert [k["description"] for k in keys].count("keyed replay") == 1


@pytest.mark.parametrize("valid", [True, False], ids=["payment", "invalid-body"])
def test_a_payment_claims_its_key_in_its_own_transaction_and_still_refuses_a_replay(
        merchant, valid):
    """POST /v1/payments writes its nonce and its key inside the payment's own first
    transaction (or, when nothing is written, with its stored answer): the very same signed
    request sent again is still a replayed nonce; a fresh signature replays the answer."""
    order = f"deferred-{valid}"
    body = encode(payment_body(VISA, order=order) if valid
                  else {"amount": -5, "currency": "USD", "merchant_order_id": order})
    url = merchant.base_url + "/v1/payments"
    key = f"deferred-claim-{valid}"
    headers = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    headers |= {"Content-Type": "application/json", "Idempotency-Key": key}
    first = httpx.post(url, content=body, headers=headers)
    assert first.status_code == (201 if valid else 400), first.text
    assert_error(httpx.post(url, content=body, headers=headers), 401, AUTH, "replayed_nonce")
    # the same signature under another key: only the nonce is taken (on PostgreSQL the nonce,
    # the key and the payment are one statement, stopped by the nonce's unique violation)
    other_key = headers | {"Idempotency-Key": key + "-other"}
    assert_error(httpx.post(url, content=body, headers=other_key), 401, AUTH, "replayed_nonce")
    again = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    again |= {"Content-Type": "application/json", "Idempotency-Key": key}
    replayed = httpx.post(url, content=body, headers=again)
    assert replayed.status_code == first.status_code
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == first.content
    listed = merchant.raw().get(f"/v1/payments?merchant_order_id={order}").json()
    assert len(listed["data"]) == (1 if valid else 0)


def test_post_refused_before_its_claim_still_uses_up_its_nonce(merchant):
    body = encode({"description": "bad key"})
    url = merchant.base_url + "/v1/access_keys"
    headers = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    headers |= {"Content-Type": "application/json", "Idempotency-Key": "bad key with spaces"}
    assert_error(httpx.post(url, content=body, headers=headers), 400, "invalid_request_error",
                 "idempotency_key_invalid")
    assert_error(httpx.post(url, content=body, headers=headers), 401, AUTH, "replayed_nonce")


def test_bad_signature_does_not_burn_the_nonce(merchant):
    nonce = "burn-check-0123456789"
    bad = sign_headers("GET", merchant.base_url + "/v1/account", b"", merchant.access_key,
                       "sk_test_wrong", nonce=nonce)
    assert_error(httpx.get(merchant.base_url + "/v1/account", headers=bad), 401, AUTH,
                 "invalid_signature")
    assert merchant.raw().get("/v1/account", nonce=nonce).status_code == 200


def test_replay_across_two_server_processes(merchant, second_server):
    path = "/v1/account"
    headers = sign_headers("GET", merchant.base_url + path, b"", merchant.access_key,
                           merchant.secret)
    first = httpx.get(merchant.base_url + path, headers=headers)
    assert first.status_code == 200, first.text
    replay = httpx.get(second_server.base_url + path, headers=headers)
    assert_error(replay, 401, AUTH, "replayed_nonce")


def test_second_server_accepts_fresh_requests(merchant, second_server):
    kit = MerchantKit(merchant.merchant_id, merchant.access_key, merchant.secret,
                      second_server.base_url)
    assert kit.raw().get("/v1/account").status_code == 200


# ---- ip_not_allowed -----------------------------------------------------------------------------


async def test_caller_outside_allowlist_is_refused(services, server):
    kit = await new_merchant(services, server.base_url, ip_allowlist=["10.0.0.0/8"])
    assert_error(kit.raw().get("/v1/account"), 403, "permission_error", "ip_not_allowed")


async def test_spoofed_forwarded_for_from_untrusted_peer_is_refused(services, server):
    kit = await new_merchant(services, server.base_url, ip_allowlist=["10.0.0.0/8"])
    res = kit.raw().get("/v1/account", headers={"X-Forwarded-For": "10.1.2.3"})
    assert_error(res, 403, "permission_error", "ip_not_allowed")


async def test_caller_inside_allowlist_is_accepted(services, server):
    kit = await new_merchant(services, server.base_url, ip_allowlist=["127.0.0.1/32"])
    assert kit.raw().get("/v1/account").status_code == 200


async def test_trusted_proxy_forwarded_for_is_the_client(services, proxied_server):
    kit = await new_merchant(services, proxied_server.base_url, ip_allowlist=["203.0.113.0/24"])
    raw = kit.raw()
    res = raw.get("/v1/account", headers={"X-Forwarded-For": "203.0.113.9"})
    assert res.status_code == 200, res.text
    # the proxy itself (no header) is not the client the allowlist names
    assert_error(raw.get("/v1/account"), 403, "permission_error", "ip_not_allowed")
    # a client-supplied left-most entry is not believed: the proxy appends the real peer
    res = raw.get("/v1/account", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert_error(res, 403, "permission_error", "ip_not_allowed")


async def test_trusted_proxy_forwarded_for_outside_allowlist_is_refused(services, proxied_server):
    kit = await new_merchant(services, proxied_server.base_url, ip_allowlist=["198.51.100.0/24"])
    res = kit.raw().get("/v1/account", headers={"X-Forwarded-For": "203.0.113.9"})
    assert_error(res, 403, "permission_error", "ip_not_allowed")


@pytest.mark.parametrize("action", ["capture", "cancel"])
def test_a_capture_or_cancel_carries_its_claim_in_its_lock_and_still_refuses_a_replay(
        merchant, action):
    """A capture's or cancel's nonce and key ride in the statement that locks the payment
    (PostgreSQL, ``Direct.fetchone(carry=True)``): the very same signed request again is a
    replayed nonce, a fresh signature with the key replays the answer, and the acquirer acted
    once; for an unknown payment the claim is written with the 404 all the same."""
    raw = merchant.raw()
    paid = raw.post("/v1/payments", payment_body(VISA, order=f"carry-{action}",
                                                 capture_method="manual"))
    assert paid.status_code == 201 and paid.json()["status"] == "requires_capture", paid.text
    pid = paid.json()["id"]
    body = encode({})
    url = f"{merchant.base_url}/v1/payments/{pid}/{action}"
    key = f"carry-{action}-{pid}"
    headers = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    headers |= {"Content-Type": "application/json", "Idempotency-Key": key}
    first = httpx.post(url, content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == ("succeeded" if action == "capture" else "canceled")
    assert_error(httpx.post(url, content=body, headers=headers), 401, AUTH, "replayed_nonce")
    again = sign_headers("POST", url, body, merchant.access_key, merchant.secret)
    again |= {"Content-Type": "application/json", "Idempotency-Key": key}
    replayed = httpx.post(url, content=body, headers=again)
    assert replayed.status_code == 200 and replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == first.content
    events = raw.get(f"/v1/events?object_id={pid}&limit=100").json()["data"]
    final = "payment.succeeded" if action == "capture" else "payment.canceled"
    assert [e["type"] for e in events].count(final) == 1

    missing_url = f"{merchant.base_url}/v1/payments/pay_missing{action}/{action}"
    headers = sign_headers("POST", missing_url, body, merchant.access_key, merchant.secret)
    headers |= {"Content-Type": "application/json", "Idempotency-Key": f"{key}-missing"}
    gone = httpx.post(missing_url, content=body, headers=headers)
    assert_error(gone, 404, "invalid_request_error", "resource_missing")
    again = sign_headers("POST", missing_url, body, merchant.access_key, merchant.secret)
    again |= {"Content-Type": "application/json", "Idempotency-Key": f"{key}-missing"}
    replayed = httpx.post(missing_url, content=body, headers=again)
    assert replayed.status_code == 404 and replayed.headers.get("idempotent-replayed") == "true"
