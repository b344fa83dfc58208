"""Crashes in the middle of money movements (RELIABILITY 15, 19; CONTRACT §3, §8).

1. A real server is SIGKILLed in the middle of a stream of create+confirm requests, restarted on
   the same database, and every request is retried with its Idempotency-Key: each key gives one
   payment, every 2xx answered before the crash is replayed as it was, nothing is left half
   written, the acquirer charged each attempt once and the ledger verifies.
2. In-process, the confirm, capture and refund flows are stopped at each step (before the
   acquirer call, after it, before the answer commits) and finished by a retry or by the
   worker's recovery job.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from openpse.domain.errors import CardDeclined
from openpse.services import payments as svc_payments
from openpse.services import refunds as svc_refunds
from openpse.services.context import Caller
from openpse.services.jobs import resolve_stuck_attempts
from openpse.storage.tables import events, payment_attempts, payments, simulator_operations
from tests.conftest import MerchantKit, make_server, new_merchant
from tests.support.ledger import (
    DECLINED,
    VISA,
    ProcessDied,
    acquirer_acts_then_dies,
    acquirer_operations,
    count_payments,
    journals_for,
    ledger_problems,
    payment_body,
    payment_row,
)
from tests.support.signer import RawClient

IN_PROGRESS = b"idempotency_request_in_progress"


async def _merchant_state(services: Any, merchant_id: str) -> list[dict[str, Any]]:
    """Each payment of the merchant with its attempts, acquirer records and event count."""
    async with services.db.read() as conn:
        rows = (await conn.execute(select(payments).where(
            payments.c.merchant_id == merchant_id))).all()
        out = []
        for r in rows:
            attempts = (await conn.execute(select(payment_attempts).where(
                payment_attempts.c.payment_id == r.id))).all()
            sim = (await conn.execute(select(func.count()).select_from(simulator_operations)
                                      .where(simulator_operations.c.reference.in_(
                                          [a.id for a in attempts] or [""])))).scalar_one()
            n_events = (await conn.execute(select(func.count()).select_from(events).where(
                events.c.object_id == r.id, events.c.type == "payment.created"))).scalar_one()
            out.append({"id": r.id, "status": r.status, "order": r.merchant_order_id,
                        "attempts": [(a.operation, a.status) for a in attempts],
                        "sim": int(sim), "created_events": int(n_events)})
    return out


def _no_half_written(state: list[dict[str, Any]]) -> None:
    for p in state:
        assert p["created_events"] == 1, p
        if p["status"] == "processing":  # in flight: its attempt must be on record
            assert ("authorize", "pending") in p["attempts"], p
        assert p["sim"] <= len(p["attempts"]), p


def _fire(kit: MerchantKit, requests: list[tuple[str, dict[str, Any]]],
          results: list[Any]) -> list[threading.Thread]:
    barrier = threading.Barrier(len(requests))

    def worker(i: int) -> None:
        key, body = requests[i]
        client = RawClient(kit.base_url, kit.access_key, kit.secret)
        client.http.timeout = httpx.Timeout(20.0)
        barrier.wait()
        try:
            results[i] = client.post("/v1/payments", body, headers={"Idempotency-Key": key})
        except httpx.HTTPError as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    return threads


def _retry(client: RawClient, key: str, body: dict[str, Any], deadline: float) -> httpx.Response:
    while True:
        res = client.post("/v1/payments", body, headers={"Idempotency-Key": key})
        if not (res.status_code == 409 and IN_PROGRESS in res.content):
            return res
        assert time.monotonic() < deadline, "idempotency lock never became stale"
        time.sleep(0.25)


async def test_sigkill_in_the_middle_of_confirms(services, migrated_db, tmp_path):
    # A restarted server takes over a dead request's key after this many seconds (default 30).
    env = {"OPENPSE_IDEMPOTENCY_LOCK_TIMEOUT_S": "1"}
    first = make_server(migrated_db, tmp_path / "first", **env).start()
    kit = await new_merchant(services, first.base_url)
    run = uuid.uuid4().hex[:8]
    n = 30
    requests = [(f"crash-{run}-{i}", payment_body(VISA, amount=1000 + i, order=f"crash-{i}"))
                for i in range(n)]
    results: list[Any] = [None] * n
    threads = _fire(kit, requests, results)
    started = time.monotonic()
    # kill once the first answers are out (at least ~100 ms in), with many still in flight
    while time.monotonic() - started < 5:
        answered = sum(isinstance(r, httpx.Response) for r in results)
        if answered >= 3 and time.monotonic() - started >= 0.1:
            break
        time.sleep(0.01)
    first.kill()
    for t in threads:
        t.join(30)
    answered_before = {i: r for i, r in enumerate(results) if isinstance(r, httpx.Response)}
    cut_off = [i for i, r in enumerate(results) if not isinstance(r, httpx.Response)]
    assert all(r.status_code == 201 for r in answered_before.values()), [
        (r.status_code, r.text[:200]) for r in answered_before.values()]
    assert cut_off, "every request finished before the kill: the test proved nothing"

    state = await _merchant_state(services, kit.merchant_id)
    _no_half_written(state)
    for i, r in answered_before.items():  # a 2xx is durable
        stored = await payment_row(services, r.json()["id"])
        assert stored["status"] == "succeeded" and stored["amount"] == 1000 + i

    second = make_server(migrated_db, tmp_path / "second", **env).start()
    try:
        client = RawClient(second.base_url, kit.access_key, kit.secret)
        deadline = time.monotonic() + 30
        retried = [_retry(client, key, body, deadline) for key, body in requests]
    finally:
        second.stop()
    for i, res in enumerate(retried):
        assert res.status_code == 201, (i, res.status_code, res.text[:300])
        assert res.json()["status"] == "succeeded" and res.json()["amount"] == 1000 + i
        if i in answered_before:
            # the body is the one first sent; the header can be missing when the kill came
            # after the answer was sent but before it was stored (pipeline order)
            assert res.content == answered_before[i].content

    state = await _merchant_state(services, kit.merchant_id)
    _no_half_written(state)
    assert len(state) == n
    for i in range(n):
        assert await count_payments(services, kit.merchant_id, f"crash-{i}") == 1
    for p in state:
        assert p["status"] == "succeeded", p
        assert all(status != "pending" for _op, status in p["attempts"]), p
        ops = await acquirer_operations(services, p["id"])
        assert [o["operation"] for o in ops] == ["sale"], p  # charged once
        assert [j["kind"] for j in await journals_for(services, p["id"])] == ["capture"], p
    assert not await ledger_problems(services)


# ---- in-process crash points ----------------------------------------------------------------

def _card() -> svc_payments.CardInput:
    return svc_payments.CardInput(VISA, 12, 2034, "123")


def _params(order: str, capture_method: str = "automatic") -> dict[str, Any]:
    return {"amount": 1500, "currency": "USD", "merchant_order_id": order, "confirm": True,
            "capture_method": capture_method, "payment_method": {"type": "card"}}


async def _only_payment(services: Any, caller: Caller) -> dict[str, Any]:
    async with services.db.read() as conn:
        rows = (await conn.execute(select(payments).where(
            payments.c.merchant_id == caller.merchant_id))).all()
    assert len(rows) == 1
    return dict(rows[0]._mapping)


async def _after_crash(services: Any, caller: Caller, sim_rows: int) -> dict[str, Any]:
    pay = await _only_payment(services, caller)
    assert pay["status"] == "processing"
    state = await _merchant_state(services, caller.merchant_id)
    _no_half_written(state)
    assert state[0]["sim"] == sim_rows
    assert not await ledger_problems(services)
    return pay


async def _charged_once(services: Any, caller: Caller, kinds: list[str]) -> dict[str, Any]:
    pay = await _only_payment(services, caller)
    ops = await acquirer_operations(services, pay["id"])
    refs = [o["reference"] for o in ops]
    assert len(refs) == len(set(refs))
    assert sorted(o["operation"] for o in ops) == sorted(kinds)
    async with services.db.read() as conn:
        pending = (await conn.execute(select(func.count()).select_from(payment_attempts).where(
            payment_attempts.c.payment_id == pay["id"],
            payment_attempts.c.status == "pending"))).scalar_one()
    assert pending == 0
    assert not await ledger_problems(services)
    return pay


async def test_crash_before_the_acquirer_call_then_idempotent_retry(services, shop, monkeypatch):
    sim = services.connectors["simulator"]

    async def dies(req: Any) -> Any:
        raise ProcessDied

    monkeypatch.setattr(sim, "authorize", dies)
    with pytest.raises(ProcessDied):
        await svc_payments.create_payment(services, shop, _params("cp-a"), _card())
    pay = await _after_crash(services, shop, sim_rows=0)
    monkeypatch.undo()
    resumed = Caller(shop.merchant_id, False, resume_resource_id=pay["id"])
    view, _ = await svc_payments.create_payment(services, resumed, _params("cp-a"), _card())
    assert view["status"] == "succeeded" and view["id"] == pay["id"]
    await _charged_once(services, shop, ["sale"])
    assert [j["kind"] for j in await journals_for(services, pay["id"])] == ["capture"]


async def test_crash_after_the_acquirer_call_then_recovery_job(services, shop, monkeypatch):
    acquirer_acts_then_dies(services, monkeypatch, ProcessDied)
    with pytest.raises(ProcessDied):
        await svc_payments.create_payment(services, shop, _params("cp-b"), _card())
    await _after_crash(services, shop, sim_rows=1)
    monkeypatch.undo()
    await resolve_stuck_attempts(services, services.now() + 60)
    pay = await _charged_once(services, shop, ["sale"])
    assert pay["status"] == "succeeded" and pay["amount_received"] == 1500
    assert [j["kind"] for j in await journals_for(services, pay["id"])] == ["capture"]


async def test_crash_before_the_answer_commits_then_confirm_again(services, shop, monkeypatch):
    async def dies(*a: Any, **kw: Any) -> Any:
        raise ProcessDied

    monkeypatch.setattr(svc_payments, "post_journal", dies)
    with pytest.raises(ProcessDied):
        await svc_payments.create_payment(services, shop, _params("cp-c", "manual"), _card())
    pay = await _after_crash(services, shop, sim_rows=1)
    monkeypatch.undo()
    view = await svc_payments.confirm_payment(services, shop, pay["id"])
    assert view["status"] == "requires_capture" and view["amount_capturable"] == 1500
    await _charged_once(services, shop, ["authorize"])
    assert [j["kind"] for j in await journals_for(services, pay["id"])] == ["authorization"]


@pytest.mark.parametrize("point", ["before_call", "after_call"])
async def test_crash_in_capture(services, shop, monkeypatch, point: str) -> None:
    view, _ = await svc_payments.create_payment(services, shop, _params("cp-d", "manual"),
                                                _card())
    sim = services.connectors["simulator"]
    real = sim.capture

    async def crashing(*a: Any) -> Any:
        if point == "after_call":
            await real(*a)
        raise ProcessDied

    monkeypatch.setattr(sim, "capture", crashing)
    with pytest.raises(ProcessDied):
        await svc_payments.capture_payment(services, shop, view["id"], 1000)
    assert (await payment_row(services, view["id"]))["status"] == "processing"
    monkeypatch.undo()
    done = await svc_payments.capture_payment(services, shop, view["id"], 1000)
    assert done["status"] == "succeeded" and done["amount_received"] == 1000
    await _charged_once(services, shop, ["authorize", "capture"])
    kinds = [j["kind"] for j in await journals_for(services, view["id"])]
    assert kinds == ["authorization", "capture"]


async def test_crash_in_refund_then_recovery_job(services, shop, monkeypatch):
    view, _ = await svc_payments.create_payment(services, shop, _params("cp-e"), _card())
    acquirer_acts_then_dies(services, monkeypatch, ProcessDied, "refund")
    with pytest.raises(ProcessDied):
        await svc_refunds.create_refund(services, shop, view["id"], 500)
    pay = await payment_row(services, view["id"])
    assert pay["amount_refunded"] == 500  # reserved before the call, so no race can exceed it
    monkeypatch.undo()
    await resolve_stuck_attempts(services, services.now() + 60)
    listed = await svc_refunds.list_refunds(services, shop, payment=view["id"], status=None,
                                            limit=10, cursor=None, created_gte=None,
                                            created_lt=None)
    assert [r["status"] for r in listed["data"]] == ["succeeded"]
    await _charged_once(services, shop, ["sale", "refund"])
    assert [j["kind"] for j in await journals_for(services, listed["data"][0]["id"])] == [
        "refund"]


async def test_the_answer_commits_with_the_work_it_describes(services, shop, monkeypatch):
    """A create+confirm stores its 201 with its Idempotency-Key in the transaction that applies
    the acquirer's answer: a process that dies before sending it leaves a key that replays that
    answer (CONTRACT §3). The answer never commits without the work, and a decline is left for
    the pipeline to store as it is sent."""
    import orjson

    from openpse.api.errors import JSON_CONTENT_TYPE
    from openpse.api.idempotency import Claimed, IdempotencyStore, Replay

    store = IdempotencyStore(services.db, services.secrets, lock_timeout_s=60)

    async def claim(key: str, now: int) -> Claimed | Replay:
        return await store.begin(merchant_id=shop.merchant_id, livemode=False, key=key,
                                 method="POST", path="/v1/payments", req_hash="h-" + key,
                                 now=now)

    def caller_for(got: Claimed) -> Caller:
        async def respond(tx: Any, status: int, body: bytes, writes: Any = None) -> None:
            await store.store_in(tx, got, status=status,
                                 headers={"content-type": JSON_CONTENT_TYPE}, body=body,
                                 writes=writes)
        return Caller(shop.merchant_id, False, idempotency_ref=got, respond=respond)

    now = services.now()
    # 1. Succeeded: the key is complete as soon as the work commits; nothing else stores it.
    got = await claim("answer-ok", now)
    assert isinstance(got, Claimed)
    view, status = await svc_payments.create_payment(services, caller_for(got),
                                                     _params("ans-ok"), _card())
    assert status == 201 and view["status"] == "succeeded"
    assert got.stored == (201, {"content-type": JSON_CONTENT_TYPE}, orjson.dumps(view))
    replay = await claim("answer-ok", now)  # the process "died" before answering
    assert isinstance(replay, Replay)
    assert (replay.status, replay.body) == (201, orjson.dumps(view))
    assert replay.headers == {"content-type": JSON_CONTENT_TYPE}

    # 2. The answer's transaction fails: neither the work nor the answer is stored.
    async def dies(*a: Any, **kw: Any) -> Any:
        raise ProcessDied

    got = await claim("answer-crash", now)
    assert isinstance(got, Claimed)
    monkeypatch.setattr(svc_payments, "post_journal", dies)
    with pytest.raises(ProcessDied):
        await svc_payments.create_payment(services, caller_for(got), _params("ans-crash"),
                                          _card())
    monkeypatch.undo()
    resumed = await claim("answer-crash", now + 120)  # the lock expired: resume, no replay
    assert isinstance(resumed, Claimed) and resumed.resource_id is not None
    async with services.db.read() as conn:
        row = (await conn.execute(select(payments.c.status).where(
            payments.c.id == resumed.resource_id))).scalar_one()
    assert row == "processing"

    # 3. A decline is not stored here: the pipeline stores the 402 it sends.
    got = await claim("answer-declined", now)
    assert isinstance(got, Claimed)
    declined = _params("ans-declined")
    with pytest.raises(CardDeclined):
        await svc_payments.create_payment(services, caller_for(got), declined,
                                          svc_payments.CardInput(DECLINED, 12, 2034, "123"))
    assert got.stored is None
    again = await claim("answer-declined", now + 120)
    assert isinstance(again, Claimed)
    assert not await ledger_problems(services)
