"""Webhook delivery end to end, with the delivery job driven in-process (RELIABILITY 20-24).

Events are committed through ``record_event`` (the way every state change writes them), so the
transactional outbox queues their deliveries; the job (``DeliveryRunner``, exactly what
``openpse worker`` runs) is then stepped with an explicit clock, so a retry due in five minutes
or an endpoint failing for five days is reached without waiting. Every request that reaches a
receiver is checked with the ``standardwebhooks`` reference verifier.

The database is a fresh one no ``openpse serve`` worker polls (``fresh_db``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from openpse.domain.errors import InvalidRequest
from openpse.domain.ids import first_id_at
from openpse.services import event_log
from openpse.services import webhook_endpoints as we
from openpse.services.context import Caller, Services
from openpse.services.webhook_delivery import build_runner
from openpse.storage.tables import webhook_deliveries
from openpse.webhooks import ssrf
from openpse.webhooks.delivery import DeliveryOptions, DeliveryRunner
from openpse.webhooks.schedule import ENDPOINT_DISABLE_AFTER_S
from openpse.webhooks.sender import WebhookSender
from openpse.webhooks.ssrf import IPAddress, UnsafeWebhookURL
from tests.support.receiver import Receiver, Reply, verify_all
from tests.support.webhooks import emit_events, fresh_db, isolated_services, new_caller

# A short lease cuts attempts at 2 s (a third of the lease), so timeouts are quick to test.
LEASE_S = 6
ATTEMPT_TIMEOUT_S = DeliveryOptions(lease_s=LEASE_S).attempt_timeout_s


@pytest.fixture(scope="module")
async def hooks_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("hooks")
    async with fresh_db(tmp) as url:
        yield url, tmp


@pytest.fixture(scope="module")
async def hooks(hooks_db: tuple[str, Path]) -> AsyncIterator[Services]:
    async with isolated_services(*hooks_db) as svc:
        yield svc


@pytest.fixture
async def caller(hooks: Services) -> AsyncIterator[Caller]:
    """A fresh merchant; its endpoints are deleted afterwards (their pending deliveries stop),
    so nothing a test leaves behind is sent during a later one."""
    c = await new_caller(hooks)
    yield c
    page = await we.list_endpoints(hooks, c, limit=100, cursor=None, created_gte=None,
                                   created_lt=None)
    for endpoint in page["data"]:
        await we.delete_endpoint(hooks, c, endpoint["id"])


@pytest.fixture
async def runner(hooks: Services) -> AsyncIterator[DeliveryRunner]:
    r = build_runner(hooks, options=DeliveryOptions(lease_s=LEASE_S))
    yield r
    await r.close()


async def endpoint(svc: Services, caller: Caller, url: str, events: list[str] | None = None
                   ) -> dict[str, Any]:
    return await we.create_endpoint(svc, caller, url=url, enabled_events=events or ["*"])


async def deliveries(svc: Services, caller: Caller, endpoint_id: str) -> list[dict[str, Any]]:
    page = await we.list_deliveries(svc, caller, endpoint_id, limit=100, cursor=None,
                                    created_gte=None, created_lt=None)
    return list(page["data"])


def unix(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def bodies(requests: Sequence[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in requests]


# --- the happy path ------------------------------------------------------------------------------


async def test_each_event_is_delivered_signed_byte_for_byte_with_its_id(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        ep = await endpoint(hooks, caller, r.url("/hook"))
        other = await endpoint(hooks, caller, r.url("/refunds-only"), ["refund.succeeded"])
        ids = await emit_events(hooks, caller, 3)
        await runner.run_until_idle(int(time.time()))
        got = r.at("/hook")
        assert sorted(x.webhook_id for x in got) == sorted(ids)
        assert verify_all(got, ep["secret"]) == bodies(got)
        for request in got:
            stored = await event_log.get_event_payload(hooks, caller, request.webhook_id)
            assert request.body == stored.encode()
            assert request.headers["content-type"] == "application/json"
        assert r.at("/refunds-only") == []  # not subscribed to payment.succeeded
        log = await deliveries(hooks, caller, ep["id"])
        assert {d["status"] for d in log} == {"succeeded"} and len(log) == 3
        attempt = log[0]["attempts"][0]
        assert attempt["status_code"] == 200 and attempt["error"] is None
        assert attempt["response_excerpt"] == "ok" and attempt["latency_ms"] >= 0
        assert await deliveries(hooks, caller, other["id"]) == []


async def test_an_event_is_queued_once_for_each_enabled_endpoint_subscribed_to_it(
    hooks: Services, caller: Caller
) -> None:
    """The outbox's fan-out (one SQL statement with the event on PostgreSQL, read-then-insert
    on SQLite): enabled endpoints of the event's merchant whose events include its type or
    ``*``; no disabled endpoint, no other merchant's."""
    with Receiver() as r:
        every = await endpoint(hooks, caller, r.url("/every"))
        paid = await endpoint(hooks, caller, r.url("/paid"),
                              ["payment.succeeded", "payment.refunded"])
        await endpoint(hooks, caller, r.url("/refunds"), ["refund.succeeded"])
        off = await endpoint(hooks, caller, r.url("/off"))
        await we.update_endpoint(hooks, caller, off["id"], enabled=False)
        stranger = await new_caller(hooks)
        await endpoint(hooks, stranger, r.url("/stranger"))
        try:
            before_ms = int(time.time() * 1000)
            two = await emit_events(hooks, caller, 2, per_tx=2)
            refund = await emit_events(hooks, caller, 1, type="refund.succeeded")
            other = await emit_events(hooks, caller, 1, type="payment.failed")
            async with hooks.db.read() as conn:
                rows = [dict(x._mapping) for x in (await conn.execute(
                    select(webhook_deliveries).where(
                        webhook_deliveries.c.event_id.in_([*two, *refund, *other]))))]
        finally:
            page = await we.list_endpoints(hooks, stranger, limit=100, cursor=None,
                                           created_gte=None, created_lt=None)
            for ep in page["data"]:
                await we.delete_endpoint(hooks, stranger, ep["id"])
    queued = Counter((x["event_id"], x["endpoint_id"]) for x in rows)
    refunds = next(e for e in (await we.list_endpoints(
        hooks, caller, limit=100, cursor=None, created_gte=None, created_lt=None))["data"]
        if e["url"].endswith("/refunds"))
    assert queued == Counter({(two[0], every["id"]): 1, (two[0], paid["id"]): 1,
                              (two[1], every["id"]): 1, (two[1], paid["id"]): 1,
                              (refund[0], every["id"]): 1, (refund[0], refunds["id"]): 1,
                              (other[0], every["id"]): 1})
    assert len({x["id"] for x in rows}) == len(rows)
    for x in rows:
        assert re.fullmatch(r"whd_[0-9a-z]{26}", x["id"]), x["id"]
        assert x["id"] >= first_id_at("whd_", before_ms)  # time-ordered like every id
        assert (x["merchant_id"], x["livemode"], x["status"]) == (caller.merchant_id, False,
                                                                  "pending")
        assert (x["attempt_count"], x["version"], x["locked_until"]) == (0, 1, None)
        assert abs(x["next_attempt_at"] - time.time()) < 60


async def test_events_held_back_and_written_together_fan_out_each_by_its_type(
    hooks: Services, caller: Caller
) -> None:
    """Events held back (``Held``, as a create+confirm does) are written in one statement with
    the next one (PostgreSQL): each is queued for exactly the endpoints subscribed to its own
    type, and a row held with them is written too."""
    from openpse.services.events import Held, flush, record_event
    from openpse.storage.tables import merchants

    with Receiver() as r:
        every = await endpoint(hooks, caller, r.url("/every"))
        paid = await endpoint(hooks, caller, r.url("/paid"), ["payment.succeeded"])
        made = await endpoint(hooks, caller, r.url("/made"), ["payment.created"])
        async with hooks.db.transaction() as tx:
            held = Held(writes=[(merchants, {"name": "held-row"}, {"id": caller.merchant_id})])
            written = []
            for etype, hold in (("payment.created", True), ("payment.processing", True),
                                ("payment.succeeded", False)):
                obj = {"id": "pay_held", "object": "payment", "status": etype[8:]}
                written.append((await record_event(
                    tx, caller=None, merchant_id=caller.merchant_id, livemode=caller.livemode,
                    type=etype, obj=obj, previous=None, now=hooks.now(), held=held,
                    hold=hold))["id"])
            assert held.events == [] and held.writes == []
            await flush(tx, held)  # nothing left: writes nothing
        async with hooks.db.read() as conn:
            rows = [dict(x._mapping) for x in (await conn.execute(
                select(webhook_deliveries).where(webhook_deliveries.c.event_id.in_(written))))]
            name = (await conn.execute(select(merchants.c.name).where(
                merchants.c.id == caller.merchant_id))).scalar_one()
    created, processing, succeeded = written
    assert Counter((x["event_id"], x["endpoint_id"]) for x in rows) == Counter({
        (created, every["id"]): 1, (created, made["id"]): 1, (processing, every["id"]): 1,
        (succeeded, every["id"]): 1, (succeeded, paid["id"]): 1})
    assert len({x["id"] for x in rows}) == len(rows) and name == "held-row"
    for event_id in written:
        assert (await event_log.get_event_payload(hooks, caller, event_id)).startswith("{")


async def test_events_of_two_merchants_are_never_written_together(
    hooks: Services, caller: Caller
) -> None:
    """One statement fans out to one merchant's endpoints: held events of another merchant (or
    mode) are refused on both backends before anything is written."""
    from openpse.services.events import Held, flush, record_event

    stranger = await new_caller(hooks)
    obj = {"id": "pay_two_merchants", "object": "payment"}
    with pytest.raises(ValueError, match="one merchant's, in one mode"):
        async with hooks.db.transaction() as tx:
            held = Held(keep=True)
            for who in (caller, stranger):
                await record_event(tx, caller=None, merchant_id=who.merchant_id,
                                   livemode=who.livemode, type="payment.created", obj=obj,
                                   previous=None, now=hooks.now(), held=held)
            await flush(tx, held)
    for who in (caller, stranger):
        page = await event_log.list_events(hooks, who, limit=10, cursor=None, type=None,
                                           object_id="pay_two_merchants", created_gte=None,
                                           created_lt=None)
        assert page["data"] == []


async def test_a_failing_receiver_gets_the_event_later_with_the_same_id(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        r.on("/flaky", lambda _req, n: Reply(500, b"down for maintenance") if n < 2 else Reply())
        ep = await endpoint(hooks, caller, r.url("/flaky"))
        [event_id] = await emit_events(hooks, caller, 1)
        t0 = int(time.time())
        await runner.run_until_idle(t0)
        [d] = await deliveries(hooks, caller, ep["id"])
        assert (d["status"], d["attempt_count"], d["last_status_code"]) == ("pending", 1, 500)
        retry_at = unix(d["next_attempt_at"])
        assert t0 + 4 <= retry_at <= t0 + 7  # 5 s ± 10 %
        await runner.run_until_idle(retry_at - 1)
        assert len(r.at("/flaky")) == 1  # not before it is due
        await runner.run_until_idle(retry_at)
        [d] = await deliveries(hooks, caller, ep["id"])
        second_retry_at = unix(d["next_attempt_at"])
        assert retry_at + 265 <= second_retry_at <= retry_at + 335  # 5 min ± 10 %
        await runner.run_until_idle(second_retry_at)
        got = r.at("/flaky")
        assert [x.webhook_id for x in got] == [event_id] * 3
        verify_all(got, ep["secret"])
        assert len({x.body for x in got}) == 1
        [d] = await deliveries(hooks, caller, ep["id"])
        assert (d["status"], d["attempt_count"]) == ("succeeded", 3)
        assert [a["status_code"] for a in d["attempts"]] == [500, 500, 200]
        assert d["attempts"][0]["response_excerpt"] == "down for maintenance"
        assert d["attempts"][0]["error"] == "http_500"


async def test_a_redirect_is_a_failure_and_is_never_followed(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        r.on("/moved", lambda _req, _n: Reply(302, b"", (("Location", r.url("/landed")),)))
        ep = await endpoint(hooks, caller, r.url("/moved"))
        await emit_events(hooks, caller, 1)
        await runner.run_until_idle(int(time.time()))
        assert len(r.at("/moved")) == 1 and r.at("/landed") == []
        [d] = await deliveries(hooks, caller, ep["id"])
        assert d["status"] == "pending" and d["last_status_code"] == 302
        assert d["attempts"][0]["error"] == "redirect_not_followed"


async def test_429_retry_after_is_honoured(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        r.on("/busy", lambda _req, n: Reply(429, b"slow down", (("Retry-After", "600"),))
             if n == 0 else Reply())
        ep = await endpoint(hooks, caller, r.url("/busy"))
        await emit_events(hooks, caller, 1)
        t0 = int(time.time())
        await runner.run_until_idle(t0)
        [d] = await deliveries(hooks, caller, ep["id"])
        assert unix(d["next_attempt_at"]) >= t0 + 600  # the schedule alone says 5 s
        await runner.run_until_idle(t0 + 300)
        assert len(r.at("/busy")) == 1
        await runner.run_until_idle(t0 + 601)
        assert len(r.at("/busy")) == 2
        [d] = await deliveries(hooks, caller, ep["id"])
        assert d["status"] == "succeeded"
        verify_all(r.at("/busy"), ep["secret"])


async def test_410_disables_the_endpoint_at_once_and_records_an_event(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        r.on("/gone", lambda _req, _n: Reply(410, b"gone"))
        gone = await endpoint(hooks, caller, r.url("/gone"))
        watcher = await endpoint(hooks, caller, r.url("/watch"))
        await emit_events(hooks, caller, 1)
        await runner.run_until_idle(int(time.time()))
        # The disabled event is queued while the job runs, stamped with the wall clock: a step
        # a second later is sure to find it due.
        await runner.run_until_idle(int(time.time()) + 1)
        assert len(r.at("/gone")) == 1
        ep = await we.get_endpoint(hooks, caller, gone["id"])
        assert (ep["status"], ep["disabled_reason"], ep["version"]) == (
            "disabled", "endpoint_gone", 2)
        [d] = await deliveries(hooks, caller, gone["id"])
        assert (d["status"], d["last_status_code"]) == ("failed", 410)
        # The merchant's other endpoint hears about it, signed like any event.
        seen = verify_all(r.at("/watch"), watcher["secret"])
        disabled = [b for b in seen if b["type"] == "webhook_endpoint.disabled"]
        assert len(disabled) == 1
        obj = disabled[0]["data"]["object"]
        assert (obj["id"], obj["status"], obj["disabled_reason"]) == (
            gone["id"], "disabled", "endpoint_gone")
        assert disabled[0]["data"]["previous_attributes"]["status"] == "enabled"
        assert "secret" not in obj and "secrets_enc" not in obj
        listed = await event_log.list_events(hooks, caller, type="webhook_endpoint.disabled",
                                             limit=10, cursor=None, created_gte=None,
                                             created_lt=None)
        assert [e["data"]["object"]["id"] for e in listed["data"]] == [gone["id"]]
        # Later events are not queued for a disabled endpoint.
        await emit_events(hooks, caller, 2)
        await runner.run_until_idle(int(time.time()))
        assert len(r.at("/gone")) == 1
        assert len(await deliveries(hooks, caller, gone["id"])) == 1


async def test_an_endpoint_failing_for_five_days_is_disabled(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        r.on("/down", lambda _req, _n: Reply(500, b"still down"))
        ep = await endpoint(hooks, caller, r.url("/down"))
        await emit_events(hooks, caller, 2)
        t0 = int(time.time())
        await runner.run_until_idle(t0)
        await runner.run_until_idle(t0 + ENDPOINT_DISABLE_AFTER_S - 100)
        assert (await we.get_endpoint(hooks, caller, ep["id"]))["status"] == "enabled"
        assert len(r.at("/down")) == 4
        await runner.run_until_idle(t0 + ENDPOINT_DISABLE_AFTER_S + 400)
        assert len(r.at("/down")) == 6
        after = await we.get_endpoint(hooks, caller, ep["id"])
        assert (after["status"], after["disabled_reason"]) == ("disabled", "failing")
        # The pending retries are canceled with it; nothing more is sent.
        assert {d["status"] for d in await deliveries(hooks, caller, ep["id"])} == {"canceled"}
        await runner.run_until_idle(t0 + 30 * 86400)
        assert len(r.at("/down")) == 6
        listed = await event_log.list_events(hooks, caller, type="webhook_endpoint.disabled",
                                             limit=10, cursor=None, created_gte=None,
                                             created_lt=None)
        assert [e["data"]["object"]["disabled_reason"] for e in listed["data"]] == ["failing"]


async def test_timeouts_and_dripping_receivers_are_cut_off_while_others_keep_flowing(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        r.on("/hang", lambda _req, _n: Reply(hang=True))
        r.on("/drip", lambda _req, _n: Reply(drip=True))
        hang = await endpoint(hooks, caller, r.url("/hang"))
        drip = await endpoint(hooks, caller, r.url("/drip"))
        fast = await endpoint(hooks, caller, r.url("/fast"))
        ids = await emit_events(hooks, caller, 5)
        started = time.time()
        await runner.run_until_idle(int(started))
        elapsed_s = time.time() - started
        assert sorted(r.ids("/fast")) == sorted(ids)
        assert max(x.at_s for x in r.at("/fast")) - started < ATTEMPT_TIMEOUT_S
        assert elapsed_s < ATTEMPT_TIMEOUT_S + 5
        verify_all(r.at("/fast"), fast["secret"])
        verify_all(r.at("/hang"), hang["secret"])
        verify_all(r.at("/drip"), drip["secret"])
        for slow in (hang, drip):
            log = await deliveries(hooks, caller, slow["id"])
            assert len(log) == 5
            for d in log:
                assert d["status"] == "pending"
                [attempt] = d["attempts"]
                assert attempt["error"] == "timeout", attempt
                assert ATTEMPT_TIMEOUT_S * 1000 - 100 <= attempt["latency_ms"] <= (
                    ATTEMPT_TIMEOUT_S * 1000 + 1500)


# --- rotation ------------------------------------------------------------------------------------


async def test_rotation_signs_with_both_secrets_until_the_old_one_expires(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        ep = await endpoint(hooks, caller, r.url("/hook"))
        old = ep["secret"]
        rotated = await we.rotate_secret(hooks, caller, ep["id"], expire_previous_in_s=3600)
        new = rotated["secret"]
        assert new != old and new.startswith("whsec_") and rotated["version"] == 2
        expires_at = unix(rotated["previous_secret_expires_at"])
        assert abs(expires_at - (time.time() + 3600)) < 5
        await emit_events(hooks, caller, 1)
        await runner.run_until_idle(int(time.time()))
        [during] = r.at("/hook")
        assert len(during.headers["webhook-signature"].split()) == 2
        verify_all([during], old, new)
        await emit_events(hooks, caller, 1)
        await runner.run_until_idle(expires_at + 1)
        after = r.at("/hook")[1]
        assert len(after.headers["webhook-signature"].split()) == 1
        verify_all([after], new)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(after.body, after.headers)
        # Rotating at once (no overlap) leaves only the newest secret signing.
        now_only = await we.rotate_secret(hooks, caller, ep["id"], expire_previous_in_s=0)
        await emit_events(hooks, caller, 1)
        await runner.run_until_idle(int(time.time()))
        last = r.at("/hook")[2]
        verify_all([last], now_only["secret"])
        with pytest.raises(WebhookVerificationError):
            Webhook(new).verify(last.body, last.headers)


# --- crashes, redelivery, concurrency ------------------------------------------------------------


async def test_a_worker_killed_between_send_and_mark_leaves_it_to_be_resent_with_the_same_id(
    hooks: Services, caller: Caller
) -> None:
    with Receiver() as r:
        ep = await endpoint(hooks, caller, r.url("/hook"))
        [event_id] = await emit_events(hooks, caller, 1)
        t0 = int(time.time())
        doomed = build_runner(hooks, options=DeliveryOptions(lease_s=LEASE_S))
        await doomed.run_once(t0)  # claims and sends; it "dies" before the step that records
        # run_once waits only linger_s for its send; under load the send may still be in
        # flight on this loop, so wait without blocking the loop
        await r.wait_for_async(lambda: len(r.at("/hook")) == 1)
        survivor = build_runner(hooks, options=DeliveryOptions(lease_s=LEASE_S))
        try:
            await survivor.run_until_idle(t0 + LEASE_S - 1)
            assert len(r.at("/hook")) == 1  # the claim still holds
            await survivor.run_until_idle(t0 + LEASE_S)
            got = r.at("/hook")
            assert [x.webhook_id for x in got] == [event_id, event_id]
            verify_all(got, ep["secret"])
            [d] = await deliveries(hooks, caller, ep["id"])
            assert (d["status"], d["attempt_count"]) == ("succeeded", 2)
            # The dead worker's late bookkeeping, were it to happen, changes nothing.
            await doomed.run_until_idle(t0 + LEASE_S + 1)
            [d] = await deliveries(hooks, caller, ep["id"])
            assert (d["status"], d["attempt_count"]) == ("succeeded", 2)
            assert len(r.at("/hook")) == 2
        finally:
            await doomed.close()
            await survivor.close()


async def test_redelivery_sends_the_same_event_id_again(
    hooks: Services, caller: Caller, runner: DeliveryRunner
) -> None:
    with Receiver() as r:
        a = await endpoint(hooks, caller, r.url("/a"))
        b = await endpoint(hooks, caller, r.url("/b"), ["payment.succeeded"])
        await endpoint(hooks, caller, r.url("/c"), ["refund.failed"])
        [event_id] = await emit_events(hooks, caller, 1)
        await runner.run_until_idle(int(time.time()))
        one = await event_log.redeliver_event(hooks, caller, event_id, endpoint_id=b["id"])
        assert [d["endpoint"] for d in one["data"]] == [b["id"]]
        assert one["data"][0]["event"] == event_id and one["data"][0]["status"] == "pending"
        every = await event_log.redeliver_event(hooks, caller, event_id)
        assert sorted(d["endpoint"] for d in every["data"]) == sorted([a["id"], b["id"]])
        await runner.run_until_idle(int(time.time()))
        assert r.ids("/a") == [event_id] * 2 and r.ids("/b") == [event_id] * 3
        assert r.at("/c") == []
        verify_all(r.at("/a"), a["secret"])
        verify_all(r.at("/b"), b["secret"])
        assert len({x.body for x in r.at("/a") + r.at("/b")}) == 1
        with pytest.raises(InvalidRequest) as refused:
            await event_log.redeliver_event(hooks, caller, event_id,
                                            endpoint_id=(await endpoint(
                                                hooks, caller, r.url("/d"),
                                                ["refund.created"]))["id"])
        assert refused.value.code == "event_type_not_enabled"


async def test_two_workers_share_a_queue_and_send_nothing_twice(
    hooks: Services, hooks_db: tuple[str, Path], caller: Caller
) -> None:
    """Two workers, each with its own database connections, drain ~2,000 deliveries."""
    with Receiver() as r:
        ep = await endpoint(hooks, caller, r.url("/hook"))
        ids = await emit_events(hooks, caller, 2000, per_tx=500)
        async with isolated_services(*hooks_db) as other:
            one = build_runner(hooks, options=DeliveryOptions(lease_s=60))
            two = build_runner(other, options=DeliveryOptions(lease_s=60))
            now = int(time.time())
            try:
                work = await asyncio.gather(one.run_until_idle(now), two.run_until_idle(now))
            finally:
                await one.close()
                await two.close()
        got = r.at("/hook")
        counts = Counter(x.webhook_id for x in got)
        assert set(counts) == set(ids)  # none missed
        assert max(counts.values()) == 1, counts.most_common(3)  # none sent twice
        assert all(w > 0 for w in work), work  # both took part
        verify_all(got, ep["secret"])


# --- the SSRF guard ------------------------------------------------------------------------------


def fake_dns(table: dict[str, str]) -> Any:
    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(table[host])]

    return resolve


@pytest.fixture
async def strict(hooks_db: tuple[str, Path]) -> AsyncIterator[Services]:
    """This database as seen by a server *without* OPENPSE_ALLOW_LOCAL_WEBHOOKS."""
    async with isolated_services(*hooks_db, allow_local=False) as svc:
        yield svc


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://localhost/hook",
    "http://LOCALHOST./hook", "http://rebind.test/hook", "http://private.test/hook",
    "http://10.0.0.7/hook", "http://169.254.169.254/latest/meta-data",
])
async def test_loopback_and_names_resolving_inward_are_refused_without_local_webhooks(
    strict: Services, caller: Caller, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setattr(ssrf, "system_resolver",
                        fake_dns({"rebind.test": "127.0.0.1", "private.test": "192.168.1.20"}))
    with pytest.raises(UnsafeWebhookURL) as refused:
        await we.create_endpoint(strict, caller, url=url, enabled_events=["*"])
    assert (refused.value.code, refused.value.param) == ("invalid_webhook_url", "url")
    page = await we.list_endpoints(strict, caller, limit=10, cursor=None, created_gte=None,
                                   created_lt=None)
    assert page["data"] == []


async def test_this_hosts_own_name_resolving_to_loopback_is_refused(
    strict: Services, caller: Caller
) -> None:
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80)}
    except OSError:
        pytest.skip("this host's name does not resolve")
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        pytest.skip(f"{name} does not resolve to loopback here")
    with pytest.raises(UnsafeWebhookURL, match="resolves to"):
        await we.create_endpoint(strict, caller, url=f"http://{name}:9/hook",
                                 enabled_events=["*"])


async def test_live_endpoints_must_be_https(hooks: Services) -> None:
    live = await new_caller(hooks, livemode=True)
    with pytest.raises(UnsafeWebhookURL, match="https"):
        await we.create_endpoint(hooks, live, url="http://example.com/hook",
                                 enabled_events=["*"])
    with pytest.raises(UnsafeWebhookURL):  # loopback is never allowed in live mode
        await we.create_endpoint(hooks, live, url="https://127.0.0.1/hook",
                                 enabled_events=["*"])


async def test_a_name_that_turns_inward_after_creation_is_refused_at_send_time(
    strict: Services, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssrf, "system_resolver", fake_dns({"hooks.test": "93.184.216.34"}))
    ep = await we.create_endpoint(strict, caller, url="http://hooks.test/hook",
                                  enabled_events=["*"])
    await emit_events(strict, caller, 1)
    rebound = WebhookSender(timeout_s=2, resolver=fake_dns({"hooks.test": "127.0.0.1"}))
    runner = build_runner(strict, options=DeliveryOptions(lease_s=LEASE_S), sender=rebound)
    try:
        await runner.run_until_idle(int(time.time()))
    finally:
        await runner.close()
        await rebound.close()
    [d] = await deliveries(strict, caller, ep["id"])
    assert d["status"] == "pending" and d["last_status_code"] is None
    assert d["attempts"][0]["error"].startswith("unsafe_url"), d["attempts"][0]
    assert "127.0.0.1" in d["attempts"][0]["error"]


async def test_drain_lets_attempts_on_the_wire_finish_and_records_them(
    hooks: Services, caller: Caller
) -> None:
    """A stopping worker claims nothing more but finishes and records what it is sending."""
    r_ = build_runner(hooks, options=DeliveryOptions(lease_s=LEASE_S))
    with Receiver() as r:
        r.on("/slow", lambda _req, _n: Reply(delay_s=0.5))
        ep = await endpoint(hooks, caller, r.url("/slow"))
        await emit_events(hooks, caller, 2)
        now = int(time.time())
        await r_.run_once(now)  # claims and starts both attempts
        assert r_.in_flight == 2
        await emit_events(hooks, caller, 1)  # due, but a draining worker must not claim it
        await r_.drain(now)
        assert r_.in_flight == 0
        log = await deliveries(hooks, caller, ep["id"])
        assert sorted(d["status"] for d in log) == ["pending", "succeeded", "succeeded"]
        assert len(r.at("/slow")) == 2
