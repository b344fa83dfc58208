"""Card data at rest (CONTRACT §4, §6; RELIABILITY 1, 3): after a run of card payments with a
CVC used nowhere else, the database (SQLite: the file and its WAL; both backends: every value
of every table), the server's logs and the event payloads hold no full card number and no CVC;
fingerprints are keyed HMACs, not plain hashes."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from openpse.crypto import Fingerprinter
from openpse.storage.tables import events, payment_methods, request_logs
from tests.conftest import new_merchant
from tests.support.ledger import (
    DECLINED,
    JCB,
    MASTERCARD,
    THREE_DS,
    VISA,
    card_pm,
    payment_body,
)

CVC = "987"
AMEX = "378282246310005"
UNIONPAY = "6200000000000005"
USED_PANS = [VISA, MASTERCARD, JCB, THREE_DS, DECLINED, AMEX, UNIONPAY]
BAD_LUHN = "4242424242424241"

_DIGITS = re.compile(r"(?<!\d)\d{13,19}(?!\d)")
_CVC_NEAR = re.compile(r"(cvc|cvv|security.?code)\W{0,12}" + CVC, re.IGNORECASE)
_CVC_VALUE = re.compile(r"[\"']" + CVC + r"[\"']")
# the CVC as a token of its own: not the same three digits inside a random id or a digest
_CVC_TOKEN = re.compile(r"(?<![0-9A-Za-z])" + CVC + r"(?![0-9A-Za-z])")


_HEX_NEIGHBOURS = frozenset("abcdef-")  # lower-case hex digests, UUIDs


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _token_around(blob: str, start: int, end: int) -> str:
    while start > 0 and (blob[start - 1].isalnum() or blob[start - 1] == "_"):
        start -= 1
    while end < len(blob) and (blob[end].isalnum() or blob[end] == "_"):
        end += 1
    return blob[start:end]


def find_card_data(blob: str, where: str) -> list[str]:
    """Every full card number (a Luhn-valid 13-19 digit run, or a PAN this run used) and every
    CVC of this run next to its field name, in ``blob``."""
    found = [f"{where}: PAN {pan[:6]}...{pan[-4:]}" for pan in USED_PANS if pan in blob]
    for m in _DIGITS.finditer(blob):
        run = m.group(0)
        if not _luhn(run):
            continue
        token = _token_around(blob, m.start(), m.end())
        # a digit run inside a hex digest, a UUID or a prefixed id is not a card number (raw
        # database pages put such values side by side, so look at the run's own neighbours too)
        before = blob[m.start() - 1] if m.start() > 0 else ""
        after = blob[m.end()] if m.end() < len(blob) else ""
        if before in _HEX_NEIGHBOURS or after in _HEX_NEIGHBOURS:
            continue
        if token != run and (re.fullmatch(r"[0-9a-f]+", token)
                             or re.fullmatch(r"[a-z]+_[0-9a-z_]+", token)):
            continue
        found.append(f"{where}: Luhn-valid run {run[:6]}...{run[-4:]} in {token[:40]!r}")
    found += [f"{where}: CVC near {m.group(0)!r}" for m in _CVC_NEAR.finditer(blob)]
    found += [f"{where}: CVC as a value" for _ in _CVC_VALUE.finditer(blob)]
    return found


async def _all_values(services: Any) -> list[tuple[str, str]]:
    """(table, text of one value) for every non-null value of every table (a logical dump)."""
    async with services.db.read() as conn:
        if services.db.is_sqlite:
            names = [r[0] for r in (await conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type='table'"))).all()]
        else:
            names = [r[0] for r in (await conn.execute(text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"))).all()]
        out = []
        for name in names:
            rows = (await conn.execute(text(f'SELECT * FROM "{name}"'))).all()
            for row in rows:
                for value in row:
                    if value is None:
                        continue
                    if isinstance(value, bytes | bytearray | memoryview):
                        value = bytes(value).decode("latin-1")
                    elif not isinstance(value, str):
                        value = json.dumps(value, default=str)
                    out.append((name, value))
    assert len(names) >= 10, names
    return out


def _run_payments(kit: Any) -> list[str]:
    """Card traffic of every kind with the run's CVC; returns the request ids."""
    raw = kit.raw()
    ids = []

    def post(path: str, body: dict[str, Any], expect: int, **kw: Any) -> dict[str, Any]:
        res = raw.post(path, body, **kw)
        assert res.status_code == expect, res.text
        ids.append(res.headers["x-request-id"])
        for pan in USED_PANS:
            assert pan not in res.text
        assert not _CVC_TOKEN.search(res.text), res.text
        return dict(res.json())

    paid = post("/v1/payments", payment_body(VISA, cvc=CVC, order="pci-1"), 201)
    post("/v1/payments", payment_body(JCB, cvc=CVC, order="pci-2", amount=5000,
                                      currency="JPY"), 201)
    post("/v1/payments", payment_body(AMEX, cvc=CVC + "4", order="pci-amex"), 201)
    post("/v1/payments", payment_body(UNIONPAY, cvc=CVC, order="pci-up"), 201)
    held = post("/v1/payments", payment_body(MASTERCARD, cvc=CVC, capture_method="manual"), 201)
    post(f"/v1/payments/{held['id']}/capture", {"amount": 500}, 200)
    post("/v1/payments", payment_body(DECLINED, cvc=CVC), 402)
    challenged = post("/v1/payments", payment_body(THREE_DS, cvc=CVC), 201)
    post(f"/v1/test_helpers/payments/{challenged['id']}/complete_3ds", {"outcome": "succeed"},
         200)
    later = post("/v1/payments", {"amount": 900, "currency": "USD",
                                  "merchant_order_id": "pci-later"}, 201)
    post(f"/v1/payments/{later['id']}/confirm", {"payment_method": card_pm(VISA, CVC)}, 200)
    post("/v1/payments", {"amount": 100, "currency": "USD", "merchant_order_id": "pci-token",
                          "confirm": True, "payment_method": {
                              "type": "card", "token": paid["payment_method"]["id"]}}, 201)
    key = {"Idempotency-Key": f"pci-{uuid.uuid4()}"}
    body = payment_body(VISA, cvc=CVC, order="pci-idem")
    post("/v1/payments", body, 201, headers=key)
    post("/v1/payments", body, 201, headers=key)
    post("/v1/refunds", {"payment": paid["id"], "amount": 100}, 201)
    # refused requests carrying a card: the request log must not keep it either
    post("/v1/payments", payment_body(BAD_LUHN, cvc=CVC), 400)
    post("/v1/payments", {**payment_body(VISA, cvc=CVC), "status": "succeeded"}, 400)
    post("/v1/payments", payment_body(VISA, cvc="98"), 400)
    return ids


async def test_no_card_number_or_cvc_at_rest(services, server, merchant):
    request_ids = _run_payments(merchant)

    async def logged() -> int:
        async with services.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(request_logs).where(
                request_logs.c.id.in_(request_ids)))).scalar_one())

    deadline = time.monotonic() + 10
    while await logged() < len(request_ids):  # the request log is written in batches
        assert time.monotonic() < deadline, "request log rows never arrived"
        time.sleep(0.2)

    found: list[str] = []
    values = await _all_values(services)
    for table, value in values:
        found += find_card_data(value, f"table {table}")
    assert any(t == "payment_methods" for t, _ in values)

    if services.db.is_sqlite:
        db_file = Path(services.db.url.split("///", 1)[1])
        for path in (db_file, db_file.with_name(db_file.name + "-wal")):
            if path.exists():
                found += find_card_data(path.read_bytes().decode("latin-1"), path.name)
        assert db_file.stat().st_size > 0

    logs = [server.log_file, *server.data_dir.glob("stderr-*.log")]
    assert server.log_file.exists() and server.log_file.stat().st_size > 0
    for path in logs:
        content = path.read_text("utf-8", "replace")
        found += find_card_data(content, path.name)
    assert any(rid in server.log_file.read_text() for rid in request_ids)

    async with services.db.read() as conn:
        payloads = [r.payload for r in (await conn.execute(
            select(events.c.payload).where(events.c.merchant_id == merchant.merchant_id))).all()]
    assert len(payloads) >= 20
    for payload in payloads:
        found += find_card_data(payload, "event")
        assert not re.search(r'"(cvc|cvv|number)"\s*:', payload), payload[:300]
    assert found == []


def test_the_scanner_finds_what_it_looks_for():
    assert find_card_data('{"n":"4242424242424242"}', "x")
    assert find_card_data("USD5105105105105100|", "x")  # Luhn-valid, next to other text
    assert find_card_data('{"cvc": "987"}', "x")
    assert find_card_data("cvc=987", "x")
    assert _CVC_TOKEN.search('{"card":{"cvc":"987"}}') and _CVC_TOKEN.search("code 987 was")
    assert not _CVC_TOKEN.search('{"id":"pay_01m9x3xwmze7eyy987wbvf76","fp":"a987"}')
    assert not find_card_data('{"id":"pay_01m80hsxtk5105105105105100"}', "x")
    assert not find_card_data("fp 5b9c977511f3d96b9f4d01352a07a742 4242424242424241", "x")


async def test_fingerprint_is_a_keyed_hmac(services, server, merchant):
    other = await new_merchant(services, server.base_url)
    a = merchant.raw().post("/v1/payments", payment_body(VISA, cvc=CVC)).json()
    b = other.raw().post("/v1/payments", payment_body(VISA, cvc="986")).json()
    c = merchant.raw().post("/v1/payments", payment_body(MASTERCARD, cvc=CVC)).json()
    fp = a["payment_method"]["card"]["fingerprint"]
    assert fp == b["payment_method"]["card"]["fingerprint"]  # same card, any merchant
    assert fp != c["payment_method"]["card"]["fingerprint"]
    assert a["payment_method"]["id"] != b["payment_method"]["id"]
    pan = VISA.encode()
    plain = [hashlib.new(name, pan).hexdigest() for name in ("md5", "sha1", "sha256", "sha512")]
    plain += [hashlib.sha256(pan + b"\n").hexdigest(), hashlib.sha256(pan[::-1]).hexdigest()]
    for digest in plain:
        assert fp not in digest and digest[: len(fp)] != fp
    # the server's key is derived from the master key: the same HMAC here, and another key
    # (an attacker's guess) gives something else
    assert services.fingerprints.fingerprint(VISA) == fp
    assert Fingerprinter(b"\x00" * 32).fingerprint(VISA) != fp
    async with services.db.read() as conn:
        row = (await conn.execute(select(payment_methods).where(
            payment_methods.c.id == a["payment_method"]["id"]))).first()
    assert row is not None and row.fingerprint == fp
    assert VISA not in row.number_enc and row.last4 == "4242"
    assert services.secrets.decrypt(row.number_enc, context=f"pan:{row.id}") == VISA
