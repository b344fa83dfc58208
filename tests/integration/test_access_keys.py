"""The access keys API (CONTRACT §2): a secret shown once, rotation with overlap, revocation,
IP allowlists, and live keys only after KYC approval."""

from __future__ import annotations

import httpx

from tests.conftest import MerchantKit
from tests.support.api_asserts import assert_error, eventually
from tests.support.servers import TEST_ADMIN_TOKEN

KEY_FIELDS = {"id", "object", "livemode", "status", "secret_hint", "expires_at", "replaced_by",
              "ip_allowlist", "rate_limit_per_s", "description", "last_used_at", "created",
              "updated", "version"}


def _kit(parent: MerchantKit, issued: dict) -> MerchantKit:
    return MerchantKit(parent.merchant_id, issued["id"], issued["secret"], parent.base_url)


def test_create_shows_the_secret_once(merchant):
    raw = merchant.raw()
    res = raw.post("/v1/access_keys", {"description": "ci"})
    assert res.status_code == 201, res.text
    created = res.json()
    secret = created["secret"]
    assert created["id"].startswith("ak_test_") and secret.startswith("sk_test_")
    assert created["object"] == "access_key" and created["livemode"] is False
    assert created["status"] == "active" and created["description"] == "ci"
    assert created["secret_hint"] == "..." + secret[-4:]
    assert set(created) == KEY_FIELDS | {"secret"}
    assert _kit(merchant, created).raw().get("/v1/account").status_code == 200

    got = raw.get(f"/v1/access_keys/{created['id']}")
    assert got.status_code == 200 and set(got.json()) == KEY_FIELDS
    listed = raw.get("/v1/access_keys")
    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list" and body["has_more"] is False
    assert created["id"] in [k["id"] for k in body["data"]]
    for res in (got, listed):
        assert secret not in res.text and secret[8:] not in res.text
        assert '"secret"' not in res.text


def test_rotate_with_overlap_then_old_key_expires(merchant):
    raw = merchant.raw()
    res = raw.post(f"/v1/access_keys/{merchant.access_key}/rotate", {"overlap_seconds": 60})
    assert res.status_code == 201, res.text
    first = res.json()
    assert first["id"] != merchant.access_key and first["secret"] != merchant.secret
    first_raw = _kit(merchant, first).raw()
    assert raw.get("/v1/account").status_code == 200  # both work during the overlap
    assert first_raw.get("/v1/account").status_code == 200
    old = first_raw.get(f"/v1/access_keys/{merchant.access_key}").json()
    assert old["replaced_by"] == first["id"] and old["status"] == "active"
    assert old["expires_at"] is not None

    # a one-second overlap, so the end of the overlap is observable
    res = first_raw.post(f"/v1/access_keys/{first['id']}/rotate", {"overlap_seconds": 1})
    assert res.status_code == 201, res.text
    second_raw = _kit(merchant, res.json()).raw()

    def _expired() -> None:
        assert_error(first_raw.get("/v1/account"), 401, "authentication_error", "key_revoked")

    eventually(_expired, timeout_s=5.0, interval_s=0.25)
    assert second_raw.get("/v1/account").status_code == 200
    assert second_raw.get(f"/v1/access_keys/{first['id']}").json()["status"] == "expired"
    assert raw.get("/v1/account").status_code == 200  # its own 60 s overlap still runs


def test_rotate_twice_is_refused(merchant):
    raw = merchant.raw()
    assert raw.post(f"/v1/access_keys/{merchant.access_key}/rotate",
                    {"overlap_seconds": 60}).status_code == 201
    res = raw.post(f"/v1/access_keys/{merchant.access_key}/rotate", {"overlap_seconds": 60})
    assert_error(res, 409, "invalid_request_error", "key_already_rotated")


def test_rotate_overlap_out_of_range_is_400(merchant):
    raw = merchant.raw()
    for bad in (-1, 30 * 86400 + 1):
        res = raw.post(f"/v1/access_keys/{merchant.access_key}/rotate", {"overlap_seconds": bad})
        assert_error(res, 400, "invalid_request_error", "parameter_invalid",
                     param="overlap_seconds")
    assert raw.get(f"/v1/access_keys/{merchant.access_key}").json()["replaced_by"] is None


def test_revoke_a_second_key(merchant):
    raw = merchant.raw()
    second = raw.post("/v1/access_keys", {}).json()
    second_raw = _kit(merchant, second).raw()
    assert second_raw.get("/v1/account").status_code == 200
    res = raw.post(f"/v1/access_keys/{second['id']}/revoke")
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "revoked"
    assert_error(second_raw.get("/v1/account"), 401, "authentication_error", "key_revoked")
    assert raw.get("/v1/account").status_code == 200
    res = raw.post(f"/v1/access_keys/{second['id']}/rotate", {"overlap_seconds": 0})
    assert_error(res, 409, "invalid_request_error", "key_not_active")


def test_update_ip_allowlist(merchant):
    raw = merchant.raw()
    second = raw.post("/v1/access_keys", {}).json()
    second_raw = _kit(merchant, second).raw()
    res = raw.post(f"/v1/access_keys/{second['id']}", {"ip_allowlist": ["203.0.113.0/24"]})
    assert res.status_code == 200, res.text
    assert res.json()["ip_allowlist"] == ["203.0.113.0/24"]
    assert res.json()["version"] == second["version"] + 1
    assert_error(second_raw.get("/v1/account"), 403, "permission_error", "ip_not_allowed")
    res = raw.post(f"/v1/access_keys/{second['id']}", {"ip_allowlist": ["127.0.0.1"]})
    assert res.json()["ip_allowlist"] == ["127.0.0.1/32"]
    assert second_raw.get("/v1/account").status_code == 200
    res = raw.post(f"/v1/access_keys/{second['id']}", {"ip_allowlist": []})
    assert res.json()["ip_allowlist"] == []
    assert second_raw.get("/v1/account").status_code == 200


def test_invalid_cidr_is_400_with_param(merchant):
    raw = merchant.raw()
    res = raw.post(f"/v1/access_keys/{merchant.access_key}", {"ip_allowlist": ["300.1.2.3/8"]})
    assert_error(res, 400, "invalid_request_error", "parameter_invalid", param="ip_allowlist[0]")
    res = raw.post(f"/v1/access_keys/{merchant.access_key}",
                   {"ip_allowlist": ["10.0.0.0/8", "not-a-cidr"]})
    assert_error(res, 400, "invalid_request_error", "parameter_invalid", param="ip_allowlist[1]")
    res = raw.post("/v1/access_keys", {"ip_allowlist": ["10.0.0.0/33"]})
    assert_error(res, 400, "invalid_request_error", "parameter_invalid", param="ip_allowlist[0]")
    key = raw.get(f"/v1/access_keys/{merchant.access_key}").json()
    assert key["ip_allowlist"] == [] and key["version"] == 1


def test_live_key_needs_kyc_approval_and_never_comes_from_a_test_key(merchant):
    raw = merchant.raw()
    operator = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
    issue_url = f"{merchant.base_url}/operator/merchants/{merchant.merchant_id}/access_keys"
    res = raw.post("/v1/access_keys", {"mode": "live"})
    assert_error(res, 403, "permission_error", "live_key_requires_live_caller")
    res = httpx.post(issue_url, json={"mode": "live"}, headers=operator)
    assert res.status_code == 403 and res.json()["error"]["code"] == "kyc_required", res.text
    assert all(not k["livemode"] for k in raw.get("/v1/access_keys").json()["data"])
    approve = httpx.post(f"{merchant.base_url}/operator/merchants/{merchant.merchant_id}/kyc",
                         json={"status": "active"}, headers=operator)
    assert approve.status_code == 200, approve.text
    res = raw.post("/v1/access_keys", {"mode": "live"})
    assert_error(res, 403, "permission_error", "live_key_requires_live_caller")
    res = httpx.post(issue_url, json={"mode": "live"}, headers=operator)
    assert res.status_code == 201, res.text
    live = res.json()
    assert live["id"].startswith("ak_live_") and live["secret"].startswith("sk_live_")
    assert _kit(merchant, live).raw().get("/v1/account").json()["livemode"] is True

