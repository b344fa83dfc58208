"""SIGKILL of ``openpse serve`` while deliveries are pending and in flight, then a restart:
every committed event still reaches the receiver (CONTRACT §5 at-least-once; RELIABILITY 20).

The server runs on a database of its own (no other worker may deliver for it) with a short
claim lease (OPENPSE_WEBHOOK_CLAIM_LEASE_S=4), so the deliveries the killed worker had claimed
become due again within seconds instead of a minute.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from openpse.services import webhook_endpoints as we
from openpse.storage.tables import webhook_deliveries as D
from tests.conftest import make_server
from tests.support.receiver import Receiver, Reply, verify_all
from tests.support.webhooks import emit_events, fresh_db, isolated_services, new_caller

EVENTS = 300


async def test_sigkill_while_deliveries_are_pending_loses_no_committed_event(
    tmp_path: Path,
) -> None:
    async with fresh_db(tmp_path) as url, isolated_services(url, tmp_path) as svc:
        with Receiver(default=lambda _req, _n: Reply(delay_s=0.05)) as r:
            caller = await new_caller(svc)
            ep = await we.create_endpoint(svc, caller, url=r.url("/hook"),
                                          enabled_events=["*"])
            env = {"OPENPSE_WEBHOOK_CLAIM_LEASE_S": "4"}
            first = make_server(url, tmp_path / "first", **env).start()
            try:
                ids = await emit_events(svc, caller, EVENTS, per_tx=50)
                r.wait_for(lambda: len(r.at("/hook")) >= 40, timeout_s=20)
            finally:
                first.kill()
            killed_at = time.monotonic()
            before = {x.webhook_id for x in r.at("/hook")}
            assert len(before) < EVENTS, "everything arrived before the kill; nothing was tested"
            async with svc.db.read() as conn:
                claimed = (await conn.execute(select(func.count()).where(
                    D.c.status == "pending", D.c.claimed_by.is_not(None)))).scalar_one()
            assert claimed > 0, "no delivery was in flight at the kill; nothing was tested"
            second = make_server(url, tmp_path / "second", **env).start()
            try:
                r.wait_for(lambda: {x.webhook_id for x in r.at("/hook")} >= set(ids),
                           timeout_s=40)
            finally:
                second.stop()
            got = r.at("/hook")
            assert set(Counter(x.webhook_id for x in got)) == set(ids)
            verify_all(got, ep["secret"])
            assert time.monotonic() - killed_at < 40
            page = await we.list_deliveries(svc, caller, ep["id"], limit=100, cursor=None,
                                            created_gte=None, created_lt=None)
            assert {d["status"] for d in page["data"]} == {"succeeded"}
