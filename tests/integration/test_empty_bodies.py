"""Actions with nothing to set may be POSTed with no body at all (signed over empty bytes)."""

from __future__ import annotations

CARD = {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12,
                                 "exp_year": 2034, "cvc": "123"}}


def test_capture_and_cancel_accept_an_empty_body(server, merchant):
    c = merchant.raw()
    auth = c.post("/v1/payments", {"amount": 1000, "currency": "JPY", "merchant_order_id": "e1",
                                   "payment_method": CARD, "capture_method": "manual",
                                   "confirm": True}).json()
    assert auth["status"] == "requires_capture"
    res = c.request("POST", f"/v1/payments/{auth['id']}/capture", raw_body=b"")
    assert res.status_code == 200, res.text
    assert res.json()["amount_received"] == 1000
    other = c.post("/v1/payments", {"amount": 500, "currency": "JPY", "merchant_order_id": "e2",
                                    "payment_method": CARD, "capture_method": "manual",
                                    "confirm": True}).json()
    res = c.request("POST", f"/v1/payments/{other['id']}/cancel", raw_body=b"")
    assert res.status_code == 200 and res.json()["status"] == "canceled", res.text


def test_a_body_that_is_not_an_object_is_still_refused(server, merchant):
    res = merchant.raw().request("POST", "/v1/payments/pay_x/capture", raw_body=b"[]",
                                 headers={"Content-Type": "application/json"})
    assert res.status_code == 400, res.text


def test_a_body_of_only_whitespace_is_not_json_and_is_refused(server, merchant):
    # Found by the schemathesis negative run: "\n" was read as no body and a key was created.
    before = merchant.raw().get("/v1/access_keys").json()["data"]
    for raw in (b"\n", b"  ", b"\r\n"):
        res = merchant.raw().request("POST", "/v1/access_keys", raw_body=raw,
                                     headers={"Content-Type": "application/json"})
        assert res.status_code == 400, (raw, res.text)
        assert res.json()["error"]["code"] == "invalid_json", res.text
    assert merchant.raw().get("/v1/access_keys").json()["data"] == before
