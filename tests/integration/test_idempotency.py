"""Idempotency-Key (CONTRACT §3; RELIABILITY 13, 14): byte-for-byte replay, 422 on a changed
request, one payment and one set of postings under concurrent retries, and a 5xx that is not
stored, so that a retry finishes the work exactly once."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import update

from openpse.domain import ledger as ledger_rules
from openpse.storage.tables import merchants
from tests.support.api_asserts import assert_error
from tests.support.ledger import (
    DECLINED,
    VISA,
    acquirer_operations,
    count_payments,
    journals_for,
    ledger_problems,
    payment_body,
)
from tests.support.signer import RawClient


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def test_replay_is_byte_identical(merchant, services):
    raw = merchant.raw()
    key = _key()
    body = payment_body(VISA, order="idem-replay")
    first = raw.post("/v1/payments", body, headers=key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    second = raw.post("/v1/payments", body, headers=key)
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["x-request-id"].startswith("req_")
    assert await count_payments(services, merchant.merchant_id, "idem-replay") == 1
    pay_id = first.json()["id"]
    assert len(await acquirer_operations(services, pay_id)) == 1
    # an action on the payment is idempotent too
    p = raw.post("/v1/payments", payment_body(VISA, order="idem-cap", capture_method="manual"))
    cap_key = _key()
    c1 = raw.post(f"/v1/payments/{p.json()['id']}/capture", {"amount": 500}, headers=cap_key)
    c2 = raw.post(f"/v1/payments/{p.json()['id']}/capture", {"amount": 500}, headers=cap_key)
    assert c1.status_code == 200 and c2.content == c1.content
    assert c2.headers["idempotent-replayed"] == "true"


async def test_decline_is_replayed_too(merchant, services):
    raw = merchant.raw()
    key = _key()
    body = payment_body(DECLINED, order="idem-decline")
    first = raw.post("/v1/payments", body, headers=key)
    assert_error(first, 402, "card_error", "card_declined")
    second = raw.post("/v1/payments", body, headers=key)
    assert second.status_code == 402 and second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert await count_payments(services, merchant.merchant_id, "idem-decline") == 1


async def test_same_key_different_request(merchant, services):
    raw = merchant.raw()
    key = _key()
    body = payment_body(VISA, order="idem-mismatch", amount=1000)
    assert raw.post("/v1/payments", body, headers=key).status_code == 201
    changed = raw.post("/v1/payments", {**body, "amount": 1001}, headers=key)
    err = assert_error(changed, 422, "idempotency_error", "idempotency_key_reused")
    assert "Idempotency-Key" in err["message"]
    assert "idempotent-replayed" not in changed.headers
    other_path = raw.post("/v1/refunds", {"payment": "pay_x"}, headers=key)
    assert_error(other_path, 422, "idempotency_error", "idempotency_key_reused")
    assert await count_payments(services, merchant.merchant_id, "idem-mismatch") == 1
    assert raw.get("/v1/refunds").json()["data"] == []


async def test_a_request_that_writes_nothing_still_meets_the_key_holder(merchant, services):
    """A payment request refused before it writes (400) stores its key with its answer in one
    transaction; when the key is already held, it gets the holder's verdict instead."""
    raw = merchant.raw()
    key = _key()
    body = payment_body(VISA, order="idem-nowrite", amount=1000)
    first = raw.post("/v1/payments", body, headers=key)
    assert first.status_code == 201
    invalid = raw.post("/v1/payments", {**body, "amount": -1}, headers=key)
    assert_error(invalid, 422, "idempotency_error", "idempotency_key_reused")
    again = raw.post("/v1/payments", body, headers=key)
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert await count_payments(services, merchant.merchant_id, "idem-nowrite") == 1


async def test_keys_are_scoped_to_the_merchant(merchant, services, server):
    from tests.conftest import new_merchant

    other = await new_merchant(services, server.base_url)
    key = _key()
    a = merchant.raw().post("/v1/payments", payment_body(VISA, order="scoped"), headers=key)
    b = other.raw().post("/v1/payments", payment_body(VISA, order="scoped"), headers=key)
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers and a.json()["id"] != b.json()["id"]


async def test_invalid_key(merchant, services):
    raw = merchant.raw()
    for bad in ("x" * 256, "has space", "caf\u00e9"):
        res = raw.post("/v1/payments", payment_body(VISA, order="bad-key"),
                       headers={"Idempotency-Key": bad.encode()})  # type: ignore[dict-item]
        assert_error(res, 400, "invalid_request_error", "idempotency_key_invalid",
                     param="Idempotency-Key")
    assert await count_payments(services, merchant.merchant_id, "bad-key") == 0


async def test_twelve_concurrent_requests_one_key(merchant, services):
    n = 12
    key = _key()
    body = payment_body(VISA, order="idem-concurrent", amount=4321)
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        client = RawClient(merchant.base_url, merchant.access_key, merchant.secret)
        barrier.wait()
        results[i] = client.post("/v1/payments", body, headers=key)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    by_status = Counter(r.status_code for r in results)
    assert set(by_status) <= {201, 409}, [(r.status_code, r.text[:200]) for r in results]
    originals = [r for r in results if r.status_code == 201
                 and "idempotent-replayed" not in r.headers]
    assert len(originals) == 1, by_status
    original = originals[0]
    for r in results:
        if r.status_code == 409:
            assert_error(r, 409, "idempotency_error", "idempotency_request_in_progress")
        elif r is not original:
            assert r.headers["idempotent-replayed"] == "true"
            assert r.content == original.content
    pay_id = original.json()["id"]
    assert original.json()["status"] == "succeeded"
    assert await count_payments(services, merchant.merchant_id, "idem-concurrent") == 1
    ops = await acquirer_operations(services, pay_id)
    assert [(o["operation"], o["amount"]) for o in ops] == [("sale", 4321)]
    assert [j["kind"] for j in await journals_for(services, pay_id)] == ["capture"]
    # the loser retries later and gets the replay
    late = merchant.raw().post("/v1/payments", body, headers=key)
    assert late.content == original.content and late.headers["idempotent-replayed"] == "true"
    assert not await ledger_problems(services)


async def _set_pricing(services: Any, merchant_id: str, pricing: Any) -> None:
    async with services.db.transaction() as tx:
        await tx.execute(update(merchants).where(merchants.c.id == merchant_id)
                         .values(pricing=pricing))


async def test_each_payment_prices_with_the_terms_read_with_its_key(merchant, services):
    """The answer prices with the merchant's plan as the request's key was read with it (no
    read of its own on PostgreSQL): a plan set by the operator applies from the next request,
    and setting it back does too."""
    raw = merchant.raw()
    await _set_pricing(services, merchant.merchant_id,
                       {"card": {"percent_bps": 1000, "fixed": {"JPY": 7}}})
    try:
        priced = raw.post("/v1/payments", payment_body(VISA, order="plan-1", amount=2000,
                                                       currency="JPY"), headers=_key())
        assert priced.status_code == 201, priced.text
        assert priced.json()["fee"] == 2000 // 10 + 7
    finally:
        await _set_pricing(services, merchant.merchant_id, None)
    default = raw.post("/v1/payments", payment_body(VISA, order="plan-2", amount=2000,
                                                    currency="JPY"), headers=_key())
    assert default.status_code == 201, default.text
    assert default.json()["fee"] == ledger_rules.fee_for(None, "card", "JPY", 2000) != 207
    assert not await ledger_problems(services)


async def test_a_5xx_is_not_stored_and_the_retry_finishes_once(merchant, services):
    """A broken pricing plan makes the answer step fail after the acquirer charged the card:
    the 500 is not stored; the retry with the same key resumes the same attempt."""
    raw = merchant.raw()
    key = _key()
    body = payment_body(VISA, order="idem-5xx", amount=2000)
    await _set_pricing(services, merchant.merchant_id, {"card": {"percent_bps": -1}})
    try:
        first = raw.post("/v1/payments", body, headers=key)
        assert_error(first, 500, "api_error", "internal_error")
        again = raw.post("/v1/payments", body, headers=key)  # still broken: a fresh 500
        assert again.status_code == 500 and "idempotent-replayed" not in again.headers
    finally:
        await _set_pricing(services, merchant.merchant_id, None)
    retry = raw.post("/v1/payments", body, headers=key)
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    pay = retry.json()
    assert pay["status"] == "succeeded" and pay["amount_received"] == 2000
    replay = raw.post("/v1/payments", body, headers=key)
    assert replay.content == retry.content and replay.headers["idempotent-replayed"] == "true"
    assert await count_payments(services, merchant.merchant_id, "idem-5xx") == 1
    ops = await acquirer_operations(services, pay["id"])
    assert [(o["operation"], o["amount"]) for o in ops] == [("sale", 2000)]
    assert [j["kind"] for j in await journals_for(services, pay["id"])] == ["capture"]
    assert not await ledger_problems(services)


async def test_stored_responses_keep_shown_once_secrets_encrypted(services, merchant):
    """A replay must return the secret again, but the database must never hold it in clear."""
    from sqlalchemy import select

    from openpse.storage.tables import idempotency_keys

    raw = merchant.raw()
    key = "secret-" + uuid.uuid4().hex
    first = raw.post("/v1/access_keys", {"description": "ci"}, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    secret = first.json()["secret"]
    again = raw.post("/v1/access_keys", {"description": "ci"}, headers={"Idempotency-Key": key})
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == first.content
    async with services.db.read() as conn:
        stored = (await conn.execute(select(idempotency_keys.c.response_body).where(
            idempotency_keys.c.key == key))).scalar_one()
    assert secret.encode() not in bytes(stored)
    assert b"sk_test_" not in bytes(stored)
