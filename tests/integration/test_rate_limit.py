"""Per-key rate limits (CONTRACT §7; RELIABILITY 12, 25): 429 with its headers, one key's
budget never touching another's, a budget shared through Redis by two server processes, and
operator routes closed to merchant keys."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MerchantKit, make_server
from tests.support.api_asserts import assert_error
from tests.support.servers import TEST_ADMIN_TOKEN

REDIS_URL = "redis://127.0.0.1:6379/0"
RATE_PER_S = 2
BURST = 2 * RATE_PER_S
MAX_TRIES = 40
OPERATOR = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


def _set_rate(base_url: str, key_id: str, rate: int | None) -> None:
    res = httpx.post(f"{base_url}/operator/access_keys/{key_id}/rate_limit",
                     json={"rate_limit_per_s": rate}, headers=OPERATOR)
    assert res.status_code == 200, res.text
    assert res.json() == {"id": key_id, "rate_limit_per_s": rate}


def _until_429(clients: list) -> tuple[int, httpx.Response]:
    """Round-robin GETs over ``clients`` until one is refused: (successes, the 429)."""
    for i in range(MAX_TRIES):
        res = clients[i % len(clients)].get("/v1/account")
        if res.status_code == 429:
            return i, res
        assert res.status_code == 200, res.text
    raise AssertionError(f"no 429 after {MAX_TRIES} requests")


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def redis_servers(migrated_db, tmp_path_factory):
    if not _redis_available():
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    servers = []
    try:
        for name in ("redis-a", "redis-b"):
            servers.append(make_server(migrated_db, tmp_path_factory.mktemp(name),
                                       OPENPSE_REDIS_URL=REDIS_URL).start())
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def test_key_over_its_limit_gets_429_with_headers(merchant, services):
    _set_rate(merchant.base_url, merchant.access_key, RATE_PER_S)
    raw = merchant.raw()
    first = raw.get("/v1/account")
    assert first.status_code == 200
    assert first.headers["RateLimit-Limit"] == str(BURST)
    assert int(first.headers["RateLimit-Remaining"]) == BURST - 1
    assert int(first.headers["RateLimit-Reset"]) >= 1
    ok, refused = _until_429([raw])
    assert BURST - 1 <= ok <= BURST + 2  # the first call spent one; slow calls refill some
    err = assert_error(refused, 429, "rate_limit_error", "rate_limited")
    assert str(RATE_PER_S) in err["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Limit"] == str(BURST)
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1


async def test_another_key_is_unaffected(merchant, services, server):
    from tests.conftest import new_merchant

    other = await new_merchant(services, server.base_url)
    _set_rate(merchant.base_url, merchant.access_key, RATE_PER_S)
    _until_429([merchant.raw()])
    for _ in range(BURST + 2):
        res = other.raw().get("/v1/account")
        assert res.status_code == 200, res.text
        assert int(res.headers["RateLimit-Limit"]) > BURST


def test_rate_limit_can_be_lifted_again(merchant):
    _set_rate(merchant.base_url, merchant.access_key, RATE_PER_S)
    _until_429([merchant.raw()])
    _set_rate(merchant.base_url, merchant.access_key, 0)  # 0 = unlimited
    res = merchant.raw().get("/v1/account")
    assert res.status_code == 200, res.text
    assert "RateLimit-Limit" not in res.headers


def test_refused_requests_are_not_executed(merchant):
    _set_rate(merchant.base_url, merchant.access_key, RATE_PER_S)
    raw = merchant.raw()
    _until_429([raw])
    res = raw.post("/v1/access_keys", {"description": "over the limit"})
    assert_error(res, 429, "rate_limit_error", "rate_limited")
    _set_rate(merchant.base_url, merchant.access_key, None)
    keys = raw.get("/v1/access_keys").json()["data"]
    assert all(k["description"] != "over the limit" for k in keys)


def test_redis_backed_limit_is_shared_by_two_servers(merchant, redis_servers):
    _set_rate(merchant.base_url, merchant.access_key, RATE_PER_S)
    clients = [MerchantKit(merchant.merchant_id, merchant.access_key, merchant.secret,
                           srv.base_url).raw() for srv in redis_servers]
    ok, refused = _until_429(clients)
    # in-process buckets would allow BURST per server; one shared bucket allows BURST in all
    # (plus what refills at RATE_PER_S while the requests run)
    assert BURST <= ok < 2 * BURST, ok
    assert_error(refused, 429, "rate_limit_error", "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    # The other server refuses as well. A token may have refilled in between (one per
    # 1/RATE_PER_S s; seen on a loaded CI machine): then it answers with the bucket empty, and
    # refuses the next call. Its own bucket would still hold about BURST / 2.
    other_client = clients[(ok + 1) % 2]
    other = other_client.get("/v1/account")
    if other.status_code == 200:
        assert other.headers["RateLimit-Remaining"] == "0", dict(other.headers)
        other = other_client.get("/v1/account")
    assert_error(other, 429, "rate_limit_error", "rate_limited")


def test_redis_nonce_store_refuses_replays_across_servers(merchant, redis_servers):
    from tests.support.signer import sign_headers

    a, b = redis_servers
    headers = sign_headers("GET", a.base_url + "/v1/account", b"", merchant.access_key,
                           merchant.secret)
    assert httpx.get(a.base_url + "/v1/account", headers=headers).status_code == 200
    res = httpx.get(b.base_url + "/v1/account", headers=headers)
    assert_error(res, 401, "authentication_error", "replayed_nonce")


# ---- operator routes are not for merchant keys --------------------------------------------------


def test_merchant_key_on_operator_routes_is_403(merchant):
    raw = merchant.raw()
    for path, body in [(f"/operator/access_keys/{merchant.access_key}/rate_limit",
                        {"rate_limit_per_s": 0}),
                       (f"/operator/merchants/{merchant.merchant_id}/kyc", {"status": "active"})]:
        assert_error(raw.post(path, body), 403, "permission_error", "operator_only")
        res = raw.post(path, body, headers={"Authorization": f"Bearer {merchant.secret}"})
        assert_error(res, 403, "permission_error", "operator_only")
    assert raw.get("/v1/account").json()["status"] == "pending_review"


def test_operator_token_is_compared_exactly(merchant):
    path = f"/operator/merchants/{merchant.merchant_id}/kyc"
    for token in [TEST_ADMIN_TOKEN[:-1], TEST_ADMIN_TOKEN + "x", ""]:
        res = httpx.post(merchant.base_url + path, json={"status": "active"},
                         headers={"Authorization": f"Bearer {token}".strip()})
        assert_error(res, 403, "permission_error", "operator_only")
    res = httpx.post(merchant.base_url + path, json={"status": "active"}, headers=OPERATOR)
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "active"
