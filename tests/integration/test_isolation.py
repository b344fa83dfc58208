"""Tenant and mode isolation (CONTRACT §2; RELIABILITY 8, 10): another merchant's ids and a
live id seen with a test key (and the reverse) answer 404 as if they did not exist, and lists
never show them."""

from __future__ import annotations

from tests.conftest import MerchantKit, new_merchant
from tests.support.api_asserts import assert_error, eventually


def _logged_ids(kit: MerchantKit, **query: str) -> list[dict]:
    qs = "&".join(f"{k}={v}" for k, v in {"limit": "100", **query}.items())
    res = kit.raw().get(f"/v1/request_logs?{qs}")
    assert res.status_code == 200, res.text
    return res.json()["data"]


async def test_other_merchants_key_is_not_found(services, server):
    a = await new_merchant(services, server.base_url)
    b = await new_merchant(services, server.base_url)
    raw = a.raw()
    target = f"/v1/access_keys/{b.access_key}"
    assert_error(raw.get(target), 404, "invalid_request_error", "resource_missing")
    for path, body in [(target, {"description": "pwned"}), (target, {"ip_allowlist": []}),
                       (target + "/rotate", {"overlap_seconds": 0}), (target + "/revoke", {})]:
        assert_error(raw.post(path, body), 404, "invalid_request_error", "resource_missing")
    unknown = raw.get("/v1/access_keys/ak_test_doesnotexist0000000000")
    assert_error(unknown, 404, "invalid_request_error", "resource_missing")
    assert raw.get(target).json()["error"]["message"].replace(b.access_key, "X") == (
        unknown.json()["error"]["message"].replace("ak_test_doesnotexist0000000000", "X"))
    listed = [k["id"] for k in raw.get("/v1/access_keys").json()["data"]]
    assert listed == [a.access_key]
    own = b.raw().get(f"/v1/access_keys/{b.access_key}").json()
    assert own["status"] == "active" and own["version"] == 1 and own["description"] is None
    assert b.raw().get("/v1/account").status_code == 200


async def test_other_merchants_request_logs_are_not_listed(services, server):
    a = await new_merchant(services, server.base_url)
    b = await new_merchant(services, server.base_url)
    b_request = b.raw().get("/v1/account").headers["x-request-id"]
    a_request = a.raw().get("/v1/account").headers["x-request-id"]

    def _a_sees_own() -> list[dict]:
        rows = _logged_ids(a)
        assert a_request in [r["id"] for r in rows]
        return rows

    rows = eventually(_a_sees_own)
    assert b_request not in [r["id"] for r in rows]
    assert {r["merchant_id"] for r in rows} == {a.merchant_id}
    assert b.access_key not in str(rows)
    eventually(lambda: _assert_in(b_request, _logged_ids(b)))


def _assert_in(item: str, rows: list[dict]) -> None:
    assert item in [r["id"] for r in rows]


async def test_modes_never_cross(services, server):
    test_kit = await new_merchant(services, server.base_url, approve=True)
    from openpse.services import merchants as m

    issued = await m.create_access_key(services, test_kit.merchant_id, livemode=True)
    live_kit = MerchantKit(test_kit.merchant_id, issued.key["id"], issued.secret,
                           server.base_url)
    test_req = test_kit.raw().get("/v1/account")
    live_req = live_kit.raw().get("/v1/account")
    assert test_req.json()["livemode"] is False and live_req.json()["livemode"] is True

    def _both_logged() -> tuple[list[dict], list[dict]]:
        test_rows, live_rows = _logged_ids(test_kit), _logged_ids(live_kit)
        assert test_req.headers["x-request-id"] in [r["id"] for r in test_rows]
        assert live_req.headers["x-request-id"] in [r["id"] for r in live_rows]
        return test_rows, live_rows

    test_rows, live_rows = eventually(_both_logged)
    assert all(r["livemode"] is False for r in test_rows)
    assert all(r["livemode"] is True for r in live_rows)
    assert live_req.headers["x-request-id"] not in [r["id"] for r in test_rows]
    assert test_req.headers["x-request-id"] not in [r["id"] for r in live_rows]

    # access keys are objects with a mode too: a test key cannot see or touch a live key
    test_raw, live_raw = test_kit.raw(), live_kit.raw()
    assert [k["id"] for k in test_raw.get("/v1/access_keys").json()["data"]] == [
        test_kit.access_key]
    assert [k["id"] for k in live_raw.get("/v1/access_keys").json()["data"]] == [
        live_kit.access_key]
    for raw, other in ((test_raw, live_kit.access_key), (live_raw, test_kit.access_key)):
        assert_error(raw.get(f"/v1/access_keys/{other}"), 404, "invalid_request_error",
                     "resource_missing")
        for suffix, body in [("", {"ip_allowlist": ["10.0.0.0/8"]}),
                             ("/rotate", {"overlap_seconds": 0}), ("/revoke", {})]:
            res = raw.post(f"/v1/access_keys/{other}{suffix}", body)
            assert_error(res, 404, "invalid_request_error", "resource_missing")
    assert live_raw.get("/v1/account").status_code == 200
    assert test_raw.get("/v1/account").status_code == 200


async def test_another_merchants_or_modes_payments_answer_404(services, server):
    """Payments and refunds are found by their key, their scope checked after
    (``storage.repos.in_scope``): another merchant's key, or the other mode's key of the
    same merchant, can neither read nor change them, and finds them exactly as missing."""
    from openpse.services import merchants as m
    from tests.support.ledger import VISA, payment_body

    owner = await new_merchant(services, server.base_url, approve=True)
    other = await new_merchant(services, server.base_url)
    issued = await m.create_access_key(services, owner.merchant_id, livemode=True)
    live = MerchantKit(owner.merchant_id, issued.key["id"], issued.secret, server.base_url)
    raw = owner.raw()
    held = raw.post("/v1/payments", payment_body(VISA, capture_method="manual")).json()
    unconfirmed = raw.post("/v1/payments", payment_body(VISA, confirm=False)).json()
    paid = raw.post("/v1/payments", payment_body(VISA)).json()
    refund = raw.post("/v1/refunds", {"payment": paid["id"], "amount": 100}).json()
    assert held["status"] == "requires_capture" and refund["status"] == "succeeded", refund
    paid = raw.get(f"/v1/payments/{paid['id']}").json()
    for stranger in (other.raw(), live.raw()):
        for path, body in [(f"/v1/payments/{held['id']}", None),
                           (f"/v1/payments/{held['id']}/capture", {}),
                           (f"/v1/payments/{held['id']}/cancel", {}),
                           (f"/v1/payments/{unconfirmed['id']}/confirm", {}),
                           (f"/v1/refunds/{refund['id']}", None)]:
            res = stranger.get(path) if body is None else stranger.post(path, body)
            err = assert_error(res, 404, "invalid_request_error", "resource_missing")
            assert err["message"] == f"no such {path.split('/')[2][:-1]}: {path.split('/')[3]!r}"
        res = stranger.post("/v1/refunds", {"payment": paid["id"], "amount": 100})
        assert_error(res, 404, "invalid_request_error", "resource_missing", param="payment")
    for before in (held, unconfirmed, paid):
        assert raw.get(f"/v1/payments/{before['id']}").json() == before
    assert raw.get(f"/v1/refunds/{refund['id']}").json() == refund
