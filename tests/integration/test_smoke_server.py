from __future__ import annotations

import httpx


def test_healthz_and_signed_account(server, merchant):
    r = httpx.get(server.base_url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["x-request-id"].startswith("req_")
    res = merchant.raw().get("/v1/account")
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["id"] == merchant.merchant_id and body["object"] == "merchant"
    assert body["livemode"] is False
